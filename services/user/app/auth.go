package app

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/auth"
)

// newVerifier builds the token verifier the configuration asks for (nil:
// no keys, so no token is accepted) and says loudly what the mode lets in.
func newVerifier(ctx context.Context, cfg *Config, log *slog.Logger) (*auth.Verifier, error) {
	if cfg.AuthMode == "anonymous" {
		log.Warn("AUTH_MODE=anonymous: anyone who reaches this instance may connect, pick any nickname and join any room; " +
			"for production set AUTH_MODE=required and the keys tokens are signed with (see SECURITY.md)")
	}
	if cfg.AuthDevTokens {
		log.Warn("AUTH_DEV_TOKENS=true: /auth/token hands a signed token for any user to anyone who asks; development only")
	}
	if cfg.APIKey == "" {
		log.Info("server API off: no API_KEY")
	}
	if cfg.AuthHMACSecret == "" && cfg.AuthPublicKeys == "" && cfg.AuthJWKSURL == "" {
		return nil, nil
	}
	return auth.New(ctx, auth.Config{
		HMACSecret: []byte(cfg.AuthHMACSecret), PublicKeys: []byte(cfg.AuthPublicKeys),
		JWKSURL: cfg.AuthJWKSURL, JWKSRefresh: cfg.AuthJWKSRefresh,
		Issuer: cfg.AuthIssuer, Audience: cfg.AuthAudience, NameClaim: cfg.AuthNameClaim,
		MaxNameBytes: cfg.MaxNickBytes, Leeway: cfg.AuthLeeway, Log: log,
	})
}

// devTokens serves GET /auth/token?user=NAME: a token for that user,
// signed with AUTH_HMAC_SECRET, valid for AUTH_DEV_TOKEN_TTL. Development
// only (AUTH_DEV_TOKENS, which needs DEV_MODE).
func devTokens(cfg *Config) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if err := protocol.ValidName(user, cfg.MaxNickBytes); err != nil || user[0] == '$' {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{"code": protocol.CodeBadNick, "message": "user must be a valid nickname"})
			return
		}
		now := time.Now()
		exp := now.Add(cfg.AuthDevTokenTTL)
		tok, err := auth.Mint([]byte(cfg.AuthHMACSecret), auth.Claims{User: user, Name: user, IssuedAt: now, Expires: exp,
			Audience: cfg.AuthAudience, Issuer: cfg.AuthIssuer})
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			_ = json.NewEncoder(w).Encode(map[string]string{"code": protocol.CodeInternal, "message": "no token could be made"})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"token": tok, "expires": exp.UnixMilli()})
	})
}
