// Package auth verifies ws-user's connection tokens (signed JWTs) and turns
// them into an Identity: the user, the name to show, and the rooms the user
// may join and publish to.
//
// Keys come from an HMAC secret, PEM public keys and a JWKS endpoint, in any
// mix. A token is checked only against keys of its algorithm's type: an HS*
// token only against the secret, RS*/PS* only against RSA keys, ES* only
// against ECDSA keys of the algorithm's curve, EdDSA only against Ed25519
// keys. So a public key can never serve as an HMAC secret (algorithm
// confusion), and "none" is never accepted.
package auth

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/wschat/wschat/services/protocol"
)

// Codes of Error: the protocol's error codes for a refused token.
const (
	// CodeTokenInvalid: malformed, badly signed, unknown key, algorithm not
	// allowed for the key, not yet valid, no exp, no sub, or bad claims.
	CodeTokenInvalid = protocol.CodeTokenInvalid
	// CodeTokenExpired: past its exp (beyond Config.Leeway).
	CodeTokenExpired = protocol.CodeTokenExpired
	// CodeTokenAudience: for another audience (aud) or from another issuer (iss).
	CodeTokenAudience = protocol.CodeTokenWrong
)

const (
	minSecretBytes   = 32               // HMACSecret and Mint's secret: 256 bits, as HS256's output
	minRSABits       = 2048             // smaller RSA keys are refused, configured or fetched
	maxUserBytes     = 128              // Identity.User
	defaultMaxName   = 32               // Identity.Name, as the user service's MAX_NICK_BYTES
	defaultRefresh   = 5 * time.Minute  // Config.JWKSRefresh
	defaultJWKSLimit = 10 * time.Second // default HTTP client's timeout; limits New's and the periodic fetches
	onDemandFetch    = 3 * time.Second  // limit of a fetch for an unknown kid, and so of a Verify's wait
	unknownKIDGap    = time.Second      // from the end of one fetch for an unknown kid to the start of the next
)

// Config says where the keys come from and what a token must claim. At
// least one of HMACSecret, PublicKeys and JWKSURL is required.
type Config struct {
	// HMACSecret allows HS256, HS384 and HS512 tokens signed with it when
	// set; at least 32 bytes.
	HMACSecret []byte
	// PublicKeys is PEM text of one or more public keys: RSA ("PUBLIC KEY"
	// or "RSA PUBLIC KEY", at least 2048 bits; RS* and PS*), ECDSA ("PUBLIC
	// KEY" on P-256, P-384 or P-521; ES256, ES384, ES512 respectively) and
	// Ed25519 ("PUBLIC KEY"; EdDSA). A "CERTIFICATE" gives its key: its
	// dates and chain are not checked, it only carries the key.
	PublicKeys []byte
	// JWKSURL is a JWKS endpoint (https, or http for tests and private
	// networks), fetched by New and then every JWKSRefresh. A token whose
	// kid is not among the keys fetched makes Verify fetch the set on
	// demand, so that rotated keys are picked up without waiting:
	//   - At most one on-demand fetch runs at a time. A Verify that needs
	//     one while it runs waits for that fetch, never starts another,
	//     and then looks its kid up again in what it fetched.
	//   - An on-demand fetch is given 3 s (less if the HTTP client's
	//     timeout is shorter), and no Verify waits longer than that, even
	//     while the endpoint hangs.
	//   - The next on-demand fetch may start 1 s after the last one ended,
	//     whether it failed or not.
	//   - A token with an unknown kid that comes when no on-demand fetch
	//     runs and none may start yet is refused at once, without waiting.
	// So tokens with made-up kids cost the endpoint at most one request per
	// fetch duration plus 1 s, and each of their callers at most one
	// fetch's wait. The price: a token of a newly rotated key that comes within
	// 1 s of the end of another on-demand fetch (one for an attacker's
	// made-up kid, say) is refused, and passes when retried after that
	// second. The window is short on purpose: a longer one that counted
	// only fetches finding no new key would not help, since the fetch for
	// a made-up kid just before a rotation finds no new key either, so one
	// such token per window would keep new keys out for the whole window.
	//
	// A token without a kid is checked against every fetched key of its
	// algorithm's type. Only asymmetric keys are used; keys whose "use" is
	// other than "sig" are ignored.
	JWKSURL string
	// JWKSRefresh is how often the JWKS is fetched again (default 5 min).
	// A failed fetch keeps the keys fetched before.
	JWKSRefresh time.Duration
	// Issuer, when set, is the iss a token must have.
	Issuer string
	// Audience, when set, must be among a token's aud.
	Audience string
	// NameClaim is the claim holding the name to show (default "name"). A
	// token without it, or with it empty, is shown by its sub.
	NameClaim string
	// MaxNameBytes bounds the name as a nickname is bounded (default 32);
	// a token whose name breaks the nickname rules is refused, not cut.
	MaxNameBytes int
	// Leeway is the clock skew allowed for exp, nbf and iat (default none).
	Leeway time.Duration
	// HTTPClient fetches the JWKS (default: a client with a 10 s timeout;
	// on-demand fetches are limited to 3 s besides).
	HTTPClient *http.Client
	// Log, when set, is told of failed JWKS fetches after New's.
	Log *slog.Logger
}

// Verifier checks tokens against the configured keys and claims. It is safe
// for concurrent use.
type Verifier struct {
	parser    *jwt.Parser
	methods   []string // the algorithms the configured keys allow
	secret    []byte
	keys      []crypto.PublicKey
	jwks      *jwks // nil without Config.JWKSURL
	nameClaim string
	maxName   int
	audience  string
	issuer    string
}

// Identity is who a verified token says the user is.
type Identity struct {
	User     string    // sub: 1 to 128 bytes of UTF-8, no control characters
	Name     string    // the name claim, else User; a valid nickname
	Expires  time.Time // exp
	IssuedAt time.Time // iat; zero when absent
	Rooms    Rooms
}

// Error is a refused token. Reason is safe to log and to show the client:
// it never holds the token or a key.
type Error struct {
	Code   string // CodeTokenInvalid, CodeTokenExpired or CodeTokenAudience
	Reason string
}

func (e *Error) Error() string { return "auth: " + e.Code + ": " + e.Reason }

func refuse(code, reason string) *Error { return &Error{Code: code, Reason: reason} }

// Algorithms by key type; ECDSA's depend on the curve.
var (
	hmacAlgs  = []string{"HS256", "HS384", "HS512"}
	rsaAlgs   = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	es256     = []string{"ES256"}
	es384     = []string{"ES384"}
	es512     = []string{"ES512"}
	eddsa     = []string{"EdDSA"}
	fetchable = slices.Concat(rsaAlgs, es256, es384, es512, eddsa) // what a JWKS may hold
)

// algs returns the algorithms a public key verifies, or why it verifies none.
func algs(key any) ([]string, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits {
			return nil, fmt.Errorf("RSA key of %d bits: at least %d are needed", n, minRSABits)
		}
		return rsaAlgs, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return es256, nil
		case elliptic.P384():
			return es384, nil
		case elliptic.P521():
			return es512, nil
		}
		return nil, fmt.Errorf("ECDSA key on %s: only P-256, P-384 and P-521 have a JWT algorithm", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return eddsa, nil
	}
	return nil, fmt.Errorf("unsupported key type %T", key)
}

func fits(m jwt.SigningMethod, key any) bool {
	a, err := algs(key)
	return err == nil && slices.Contains(a, m.Alg())
}

// New makes a Verifier. It fails on a config without keys, a short secret,
// PEM text it cannot use, or a JWKS it cannot fetch now. The JWKS is
// fetched again in the background until ctx ends; the keys last fetched
// then stay in use.
func New(ctx context.Context, cfg Config) (*Verifier, error) {
	if len(cfg.HMACSecret) == 0 && len(cfg.PublicKeys) == 0 && cfg.JWKSURL == "" {
		return nil, errors.New("auth: no key: set an HMAC secret, public keys or a JWKS URL")
	}
	if cfg.Leeway < 0 {
		return nil, fmt.Errorf("auth: leeway must not be negative, got %v", cfg.Leeway)
	}
	v := &Verifier{
		nameClaim: cmp.Or(cfg.NameClaim, "name"),
		maxName:   defaultMaxName,
		audience:  cfg.Audience,
		issuer:    cfg.Issuer,
	}
	if cfg.MaxNameBytes > 0 {
		v.maxName = cfg.MaxNameBytes
	}
	if len(cfg.HMACSecret) > 0 {
		if len(cfg.HMACSecret) < minSecretBytes {
			return nil, fmt.Errorf("auth: the HMAC secret must be at least %d bytes, got %d", minSecretBytes, len(cfg.HMACSecret))
		}
		v.secret = bytes.Clone(cfg.HMACSecret)
		v.methods = append(v.methods, hmacAlgs...)
	}
	if len(cfg.PublicKeys) > 0 {
		keys, err := parseKeys(cfg.PublicKeys)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			a, _ := algs(k) // parseKeys checked
			v.methods = append(v.methods, a...)
		}
		v.keys = keys
	}
	if cfg.JWKSURL != "" {
		j, err := newJWKS(ctx, cfg)
		if err != nil {
			return nil, err
		}
		v.jwks = j
		v.methods = append(v.methods, fetchable...)
	}
	slices.Sort(v.methods)
	v.methods = slices.Compact(v.methods)

	opts := []jwt.ParserOption{
		jwt.WithValidMethods(v.methods),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithStrictDecoding(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// parseKeys reads every PEM block of text; any block it cannot use is an
// error, so a typo does not silently leave a key out.
func parseKeys(text []byte) ([]crypto.PublicKey, error) {
	var keys []crypto.PublicKey
	rest := text
	for n := 1; ; n++ {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		var key any
		var err error
		switch b.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(b.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(b.Bytes)
		case "CERTIFICATE":
			var c *x509.Certificate
			if c, err = x509.ParseCertificate(b.Bytes); err == nil {
				key = c.PublicKey
			}
		default:
			if strings.Contains(b.Type, "PRIVATE KEY") {
				return nil, fmt.Errorf("auth: public keys: PEM block %d is a private key (%s): give its public key", n, b.Type)
			}
			return nil, fmt.Errorf("auth: public keys: PEM block %d is a %q, not a public key or certificate", n, b.Type)
		}
		if err == nil {
			_, err = algs(key)
		}
		if err != nil {
			return nil, fmt.Errorf("auth: public keys: PEM block %d (%s): %w", n, b.Type, err)
		}
		keys = append(keys, key)
	}
	switch {
	case len(keys) == 0:
		return nil, errors.New("auth: public keys: no PEM block found")
	case len(bytes.TrimSpace(rest)) > 0:
		return nil, fmt.Errorf("auth: public keys: text after PEM block %d is not PEM", len(keys))
	}
	return keys, nil
}

// jwks holds the keys fetched from a JWKS endpoint.
type jwks struct {
	ctx     context.Context // New's: on-demand fetches end with it
	cached  keyfunc.Keyfunc // reads the keys fetched; never fetches
	refetch jwkset.Storage  // the same keys, but its KeyRead of an unknown kid fetches the set first

	// The on-demand fetch (see Config.JWKSURL) is shared: Verifies with
	// unknown kids wait for the one under way, so that a burst of tokens
	// signed with a new key costs one fetch and all of them pass. The rate
	// limit is here, not in jwkset's limiter: that one waits for its next
	// slot (up to its timeout) instead of refusing.
	mu     sync.Mutex
	flight *flight   // the on-demand fetch under way, nil when none; guarded by mu
	next   time.Time // no on-demand fetch starts before this; guarded by mu
}

// flight is one on-demand fetch of the JWKS.
type flight struct {
	done     chan struct{} // closed once it ended and stored what it fetched
	deadline time.Time     // by when it ends, failed if not done
}

func newJWKS(ctx context.Context, cfg Config) (_ *jwks, err error) {
	u, err := url.ParseRequestURI(cfg.JWKSURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, errors.New("auth: the JWKS URL must be an absolute http or https URL")
	}
	where := shown(u)
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: defaultJWKSLimit}
	}
	timeout := cmp.Or(client.Timeout, defaultJWKSLimit)

	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		if err != nil {
			cancel() // jwkset starts its refresh goroutine before the first fetch
		}
	}()
	store, err := jwkset.NewStorageFromHTTP(cfg.JWKSURL, jwkset.HTTPClientStorageOptions{
		Client:          client,
		Ctx:             ctx,
		HTTPTimeout:     timeout,
		RefreshInterval: cmp.Or(max(cfg.JWKSRefresh, 0), defaultRefresh),
		RefreshErrorHandler: func(ctx context.Context, err error) {
			if cfg.Log != nil {
				cfg.Log.WarnContext(ctx, "auth: fetching the JWKS failed; the keys fetched before stay in use",
					"url", where, "err", withoutURL(err))
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("auth: fetching the JWKS from %s: %w", where, withoutURL(err))
	}
	if keys, _ := store.KeyReadAll(ctx); len(keys) == 0 {
		return nil, fmt.Errorf("auth: the JWKS from %s holds no supported key", where)
	}
	refetch, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs: map[string]jwkset.Storage{cfg.JWKSURL: store},
		// jwkset fetches under this timeout too; jwks.key gives less.
		RateLimitWaitMax:  onDemandFetch,
		RefreshUnknownKID: rate.NewLimiter(rate.Inf, 1), // limited by jwks.key instead
	})
	if err != nil {
		return nil, fmt.Errorf("auth: JWKS from %s: %w", where, err)
	}
	use := []jwkset.USE{jwkset.UseSig, ""}
	cached, err := keyfunc.New(keyfunc.Options{Ctx: ctx, Storage: store, UseWhitelist: use})
	if err != nil {
		return nil, fmt.Errorf("auth: JWKS from %s: %w", where, err)
	}
	return &jwks{ctx: ctx, cached: cached, refetch: refetch}, nil
}

// shown is u fit for messages and logs: without user info, query and
// fragment, any of which may hold a secret.
func shown(u *url.URL) string {
	c := *u
	c.User, c.RawQuery, c.ForceQuery, c.Fragment, c.RawFragment = nil, "", false, "", ""
	return c.String()
}

// withoutURL drops the URL net/http writes into its errors: its query may
// hold a secret.
func withoutURL(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return ue.Err
	}
	return err
}

var (
	errNoKey      = errors.New("no key for the token's algorithm")
	errUnknownKID = errors.New("unknown key id")
)

// key returns the token's key (or key set, for jwt.VerificationKeySet).
func (j *jwks) key(t *jwt.Token) (any, error) {
	k, err := j.cached.Keyfunc(t)
	if !errors.Is(err, jwkset.ErrKeyNotFound) {
		return k, err
	}
	// The issuer may have rotated its keys since the last fetch.
	if f := j.join(t); f != nil {
		wait := time.NewTimer(time.Until(f.deadline))
		select {
		case <-f.done:
		case <-wait.C: // in case the HTTP client outlives its context
		}
		wait.Stop()
	}
	// Also without a fetch to wait for: one may have stored the key since
	// the look-up above.
	return j.cached.Keyfunc(t)
}

// join returns the on-demand fetch under way, else starts one and returns
// it if one may start now, else returns nil.
func (j *jwks) join(t *jwt.Token) *flight {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.flight != nil {
		return j.flight
	}
	if time.Now().Before(j.next) {
		return nil
	}
	ctx, cancel := context.WithTimeout(j.ctx, onDemandFetch)
	f := &flight{done: make(chan struct{})}
	f.deadline, _ = ctx.Deadline()
	j.flight = f
	kid, _ := t.Header[jwkset.HeaderKID].(string) // a string: not found by cached
	// Its own goroutine, so that every caller, this one too, waits at most
	// until the deadline. The keys are stored before j.flight is cleared:
	// a caller that finds no flight finds what it fetched.
	go func() {
		defer cancel()
		_, _ = j.refetch.KeyRead(ctx, kid) // a failure goes to the RefreshErrorHandler
		j.mu.Lock()
		j.flight, j.next = nil, time.Now().Add(unknownKIDGap)
		j.mu.Unlock()
		close(f.done)
	}()
	return f
}

// key is the jwt.Keyfunc: the keys of the token's algorithm's type only.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	if _, ok := t.Method.(*jwt.SigningMethodHMAC); ok {
		if v.secret == nil {
			return nil, errNoKey
		}
		return v.secret, nil
	}
	var set jwt.VerificationKeySet
	for _, k := range v.keys {
		if fits(t.Method, k) {
			set.Keys = append(set.Keys, k)
		}
	}
	var jerr error
	if v.jwks != nil {
		got, err := v.jwks.key(t)
		switch k := got.(type) {
		case nil:
		case jwt.VerificationKeySet:
			for _, k := range k.Keys {
				if fits(t.Method, k) {
					set.Keys = append(set.Keys, k)
				}
			}
		default:
			if fits(t.Method, k) {
				set.Keys = append(set.Keys, k)
			}
		}
		if errors.Is(err, jwkset.ErrKeyNotFound) || errors.Is(err, errUnknownKID) {
			jerr = errUnknownKID
		}
	}
	if len(set.Keys) == 0 {
		return nil, cmp.Or(jerr, errNoKey)
	}
	return set, nil
}

// tokenClaims are the registered claims, checked by jwt, and the raw rest,
// read once the signature is verified.
type tokenClaims struct {
	jwt.RegisteredClaims
	raw map[string]json.RawMessage
}

func (c *tokenClaims) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &c.RegisteredClaims); err != nil {
		return err
	}
	return json.Unmarshal(b, &c.raw)
}

// Verify checks token's signature and claims and returns its Identity. A
// refused token's error is an *Error. It does no I/O, except that a token
// whose kid is not among the JWKS keys may wait for one on-demand fetch of
// the set (at most 3 s; see Config.JWKSURL).
func (v *Verifier) Verify(token string) (*Identity, error) {
	var c tokenClaims
	t, err := v.parser.ParseWithClaims(token, &c, v.key)
	if err != nil {
		return nil, v.refusal(t, &c, err)
	}
	id, e := v.identity(&c)
	if e != nil {
		return nil, e
	}
	return id, nil
}

func (v *Verifier) refusal(t *jwt.Token, c *tokenClaims, err error) *Error {
	invalid := func(reason string) *Error { return refuse(CodeTokenInvalid, reason) }
	missing := errors.Is(err, jwt.ErrTokenRequiredClaimMissing)
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return invalid("malformed token")
	case t == nil || t.Method == nil || !slices.Contains(v.methods, t.Method.Alg()):
		return invalid("algorithm not allowed")
	case errors.Is(err, errUnknownKID):
		return invalid("unknown key id")
	case errors.Is(err, errNoKey):
		return invalid("no key for the token's algorithm")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return invalid("bad signature")
	case !errors.Is(err, jwt.ErrTokenInvalidClaims):
		return invalid("token cannot be verified")
	// The signature is good: the claims are the issuer's.
	case c.ExpiresAt == nil:
		return invalid("token has no expiry")
	// A missing aud or iss is another audience or issuer too (jwt calls it
	// a missing required claim).
	case errors.Is(err, jwt.ErrTokenInvalidAudience) || missing && v.audience != "" && !slices.Contains(c.Audience, v.audience):
		return refuse(CodeTokenAudience, "token is for another audience")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer) || missing && v.issuer != "" && c.Issuer == "":
		return refuse(CodeTokenAudience, "token is from another issuer")
	case errors.Is(err, jwt.ErrTokenNotValidYet) || errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return invalid("token is not valid yet")
	case errors.Is(err, jwt.ErrTokenExpired):
		return refuse(CodeTokenExpired, "token has expired")
	}
	return invalid("token has invalid claims")
}

func (v *Verifier) identity(c *tokenClaims) (*Identity, *Error) {
	invalid := func(format string, args ...any) *Error {
		return refuse(CodeTokenInvalid, fmt.Sprintf(format, args...))
	}
	if c.Subject == "" {
		return nil, invalid("token has no sub")
	}
	if err := protocol.ValidName(c.Subject, maxUserBytes); err != nil {
		return nil, invalid("token sub %v", err)
	}
	id := &Identity{User: c.Subject, Name: c.Subject, Expires: c.ExpiresAt.Time}
	if c.IssuedAt != nil {
		id.IssuedAt = c.IssuedAt.Time
	}
	if raw, ok := c.raw[v.nameClaim]; ok {
		var name *string
		if json.Unmarshal(raw, &name) != nil {
			return nil, invalid("token claim %q must be a string", v.nameClaim)
		}
		if name != nil && *name != "" {
			id.Name = *name
		}
	}
	if err := protocol.ValidName(id.Name, v.maxName); err != nil {
		if id.Name == id.User {
			return nil, invalid("token has no %q claim and its sub is no valid name: it %v", v.nameClaim, err)
		}
		return nil, invalid("token name %v", err)
	}
	var err error
	if id.Rooms, err = parseRooms(c.raw["rooms"]); err != nil {
		return nil, invalid("%v", err)
	}
	return id, nil
}

// Claims are what Mint signs; zero fields are left out.
type Claims struct {
	User     string    // sub
	Name     string    // name
	Expires  time.Time // exp
	IssuedAt time.Time // iat
	Audience string    // aud
	Issuer   string    // iss
	Rooms    *Rooms    // rooms, when not nil; a nil list in it is written ["*"]
}

// Mint signs claims with HS256 — for development tokens and tests only. The
// secret must be at least 32 bytes.
func Mint(secret []byte, c Claims) (string, error) {
	if len(secret) < minSecretBytes {
		return "", fmt.Errorf("auth: mint: the secret must be at least %d bytes, got %d", minSecretBytes, len(secret))
	}
	m := jwt.MapClaims{}
	for k, s := range map[string]string{"sub": c.User, "name": c.Name, "aud": c.Audience, "iss": c.Issuer} {
		if s != "" {
			m[k] = s
		}
	}
	for k, t := range map[string]time.Time{"exp": c.Expires, "iat": c.IssuedAt} {
		if !t.IsZero() {
			m[k] = jwt.NewNumericDate(t)
		}
	}
	if c.Rooms != nil {
		// A nil list means any room; in the claim that is "*".
		every := func(l []string) []string {
			if l == nil {
				return []string{"*"}
			}
			return l
		}
		m["rooms"] = Rooms{Join: every(c.Rooms.Join), Publish: every(c.Rooms.Publish)}
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, m).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("auth: mint: %w", err)
	}
	return s, nil
}
