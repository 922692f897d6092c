package app

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wschat/wschat/services/settings"
)

// Config is ws-user's whole configuration, read from the environment only.
type Config struct {
	Host       string `env:"HOST"`
	Port       int    `env:"PORT" envDefault:"8080"`
	RelayerURL string `env:"RELAYER_URL"`
	// Bus is the relay tier: relayer, nats or local (standalone); empty:
	// relayer when RELAYER_URL is set, else local (busMode).
	Bus                string        `env:"BUS"`
	NATSURL            []string      `env:"NATS_URL" envSeparator:","`
	NATSUser           string        `env:"NATS_USER"`
	NATSPassword       string        `env:"NATS_PASSWORD" settings:"file"`
	NATSToken          string        `env:"NATS_TOKEN" settings:"file"`
	NATSCreds          string        `env:"NATS_CREDS"`
	NATSNKey           string        `env:"NATS_NKEY"`
	NATSTLSCA          string        `env:"NATS_TLS_CA"`
	NATSTLSCert        string        `env:"NATS_TLS_CERT"`
	NATSTLSKey         string        `env:"NATS_TLS_KEY"`
	NATSStream         string        `env:"NATS_STREAM" envDefault:"wschat"`
	NATSReplicas       int           `env:"NATS_REPLICAS" envDefault:"3"`
	NATSMaxBytes       int64         `env:"NATS_MAX_BYTES" envDefault:"1073741824"`
	NATSMaxAge         time.Duration `env:"NATS_MAX_AGE" envDefault:"168h"`
	NATSDedupWindow    time.Duration `env:"NATS_DEDUP_WINDOW" envDefault:"10m"`
	NATSPresenceTTL    time.Duration `env:"NATS_PRESENCE_TTL" envDefault:"15s"`
	NATSPublishTimeout time.Duration `env:"NATS_PUBLISH_TIMEOUT" envDefault:"10s"`
	NATSCatchUpMax     int           `env:"NATS_CATCHUP_MAX" envDefault:"100000"`
	NATSMaxConsumers   int           `env:"NATS_MAX_CONSUMERS" envDefault:"100000"`
	RelaySecret        string        `env:"RELAY_SECRET" settings:"file"` // or RELAY_SECRET_FILE
	DevMode            bool          `env:"DEV_MODE" envDefault:"false"`
	AuthMode           string        `env:"AUTH_MODE" envDefault:"anonymous"`
	AuthHMACSecret     string        `env:"AUTH_HMAC_SECRET" settings:"file"`
	AuthPublicKeys     string        `env:"AUTH_PUBLIC_KEYS" settings:"file"` // PEM, or AUTH_PUBLIC_KEYS_FILE
	AuthJWKSURL        string        `env:"AUTH_JWKS_URL"`
	AuthJWKSRefresh    time.Duration `env:"AUTH_JWKS_REFRESH" envDefault:"5m"`
	AuthIssuer         string        `env:"AUTH_ISSUER"`
	AuthAudience       string        `env:"AUTH_AUDIENCE"`
	AuthNameClaim      string        `env:"AUTH_NAME_CLAIM" envDefault:"name"`
	AuthLeeway         time.Duration `env:"AUTH_LEEWAY" envDefault:"5s"`
	AuthTimeout        time.Duration `env:"AUTH_TIMEOUT" envDefault:"10s"`
	AuthExpiryNotice   time.Duration `env:"AUTH_EXPIRY_NOTICE" envDefault:"60s"`
	AuthRevokeFor      time.Duration `env:"AUTH_REVOKE_FOR" envDefault:"24h"`
	AuthDevTokens      bool          `env:"AUTH_DEV_TOKENS" envDefault:"false"`
	AuthDevTokenTTL    time.Duration `env:"AUTH_DEV_TOKEN_TTL" envDefault:"1h"`
	APIKey             string        `env:"API_KEY" settings:"file"`
	APITimeout         time.Duration `env:"API_TIMEOUT" envDefault:"10s"`
	InstanceID         string        `env:"INSTANCE_ID"` // default: defaultInstanceID
	AllowedOrigins     []string      `env:"ALLOWED_ORIGINS" envSeparator:","`
	HistorySize        int           `env:"HISTORY_SIZE" envDefault:"50"`
	HistoryLimit       int           `env:"HISTORY_LIMIT" envDefault:"1000"`
	DedupWindow        int           `env:"DEDUP_WINDOW" envDefault:"100000"`
	MaxFrameBytes      int           `env:"MAX_FRAME_BYTES" envDefault:"16384"`
	MaxMessageBytes    int           `env:"MAX_MESSAGE_BYTES" envDefault:"4096"`
	MaxRoomBytes       int           `env:"MAX_ROOM_NAME_BYTES" envDefault:"64"`
	MaxNickBytes       int           `env:"MAX_NICK_BYTES" envDefault:"32"`
	MaxRooms           int           `env:"MAX_ROOMS" envDefault:"32"`
	RatePerSec         float64       `env:"RATE_PER_SEC" envDefault:"20"`
	RateBurst          int           `env:"RATE_BURST" envDefault:"40"`
	RateCloseAfter     time.Duration `env:"RATE_LIMIT_CLOSE_AFTER" envDefault:"60s"`
	FrameTimeout       time.Duration `env:"FRAME_READ_TIMEOUT" envDefault:"5s"`
	SendQueue          int           `env:"SEND_QUEUE" envDefault:"1024"`
	SendQueueBytes     int           `env:"SEND_QUEUE_BYTES" envDefault:"8388608"`
	JoinTimeout        time.Duration `env:"JOIN_TIMEOUT" envDefault:"10s"`
	MaxConns           int           `env:"MAX_CONNS" envDefault:"0"`
	MaxConnsPerAddr    int           `env:"MAX_CONNS_PER_ADDR" envDefault:"100"`
	TrustedProxies     []string      `env:"TRUSTED_PROXIES" envSeparator:"," envDefault:"127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"`
	WriteTimeout       time.Duration `env:"WRITE_TIMEOUT" envDefault:"30s"`
	PresenceDelay      time.Duration `env:"PRESENCE_DELAY" envDefault:"20ms"`
	PendingMax         int           `env:"RELAY_PENDING_MAX" envDefault:"10000"`
	RelayQueueBytes    int           `env:"RELAY_QUEUE_BYTES" envDefault:"67108864"`
	RelayPublishWait   time.Duration `env:"RELAY_PUBLISH_WAIT" envDefault:"2s"`
	RelayPing          time.Duration `env:"RELAY_PING_INTERVAL" envDefault:"5s"`
	RelayFlush         time.Duration `env:"RELAY_FLUSH_DELAY" envDefault:"0s"`
	ReconnectMin       time.Duration `env:"RELAY_RECONNECT_MIN" envDefault:"100ms"`
	ReconnectMax       time.Duration `env:"RELAY_RECONNECT_MAX" envDefault:"5s"`
	ShutdownTimeout    time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"10s"`
	ReclaimQuiet       time.Duration `env:"MEMORY_RECLAIM_QUIET" envDefault:"2s"`
	ReclaimMinBytes    uint64        `env:"MEMORY_RECLAIM_MIN_BYTES" envDefault:"16777216"`
	LogLevel           string        `env:"LOG_LEVEL" envDefault:"info"`
	DebugAddr          string        `env:"DEBUG_ADDR"`

	// Trusted is TrustedProxies parsed (loadConfig).
	Trusted []netip.Prefix
	// level is LogLevel parsed (loadConfig).
	level slog.Level
}

// parseProxies reads TRUSTED_PROXIES: CIDR prefixes or single addresses;
// "none" trusts no proxy.
// busMode is the relay tier BUS names, or the one RELAYER_URL implies.
func (c *Config) busMode() string {
	switch {
	case c.Bus != "":
		return c.Bus
	case c.RelayerURL != "":
		return "relayer"
	default:
		return "local"
	}
}

func parseProxies(list []string) ([]netip.Prefix, error) {
	if len(list) == 1 && strings.TrimSpace(list[0]) == "none" {
		return nil, nil
	}
	var out []netip.Prefix
	for _, v := range list {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if p, err := netip.ParsePrefix(v); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("TRUSTED_PROXIES: %q is neither an address nor a CIDR prefix (or use none)", v)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// loadConfig reads Config through getenv, so tests need no process
// environment, and checks it before anything listens.
func loadConfig(getenv func(string) string) (Config, error) {
	var cfg Config
	if err := settings.Load(&cfg, getenv); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	if cfg.InstanceID == "" {
		host, err := os.Hostname()
		if err != nil {
			return cfg, fmt.Errorf("config: INSTANCE_ID is empty and the hostname is unknown (%w); set INSTANCE_ID", err)
		}
		cfg.InstanceID = defaultInstanceID(host)
	}
	trusted, perr := parseProxies(cfg.TrustedProxies)
	cfg.Trusted = trusted
	if err := errors.Join(perr, cfg.validate()); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	if cfg.MaxConns == 0 {
		// Below the open-files limit, with room for the listener, the
		// relay link and the rest: past it, accept would fail with
		// EMFILE and stall every new connection, good or not.
		if n, ok := openFilesLimit(); ok {
			cfg.MaxConns = max(1, int(min(n, 1<<30))-256)
		}
	}
	return cfg, nil
}

func (c *Config) validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Port >= 0 && c.Port <= 65535, "PORT must be 0..65535, got %d", c.Port)
	mode := c.busMode()
	check(mode == "relayer" || mode == "nats" || mode == "local", "BUS must be relayer, nats or local, got %q", c.Bus)
	check(mode != "relayer" || c.RelayerURL != "", "BUS=relayer needs RELAYER_URL")
	if mode == "nats" {
		check(len(c.NATSURL) > 0, "BUS=nats needs NATS_URL (nats://host:4222, comma-separated seeds)")
		for _, s := range c.NATSURL {
			u, err := url.Parse(strings.TrimSpace(s))
			check(err == nil && (u.Scheme == "nats" || u.Scheme == "tls") && u.Host != "", "NATS_URL entries must look like nats://host:4222, got %q", s)
		}
		check(c.NATSStream != "" && !strings.ContainsAny(c.NATSStream, ". *>"), "NATS_STREAM must be a stream name (no dots, spaces or wildcards), got %q", c.NATSStream)
		check(c.NATSReplicas >= 1 && c.NATSReplicas <= 5, "NATS_REPLICAS must be 1..5, got %d", c.NATSReplicas)
		check(c.NATSMaxBytes >= 0, "NATS_MAX_BYTES must be 0 (no bound) or positive, got %d", c.NATSMaxBytes)
		check(c.NATSMaxAge >= 0, "NATS_MAX_AGE must be 0s (no bound) or positive, got %s", c.NATSMaxAge)
		check(c.NATSDedupWindow > 0, "NATS_DEDUP_WINDOW must be positive, got %s", c.NATSDedupWindow)
		check(c.NATSMaxAge == 0 || c.NATSDedupWindow <= c.NATSMaxAge, "NATS_DEDUP_WINDOW (%s) may not be longer than NATS_MAX_AGE (%s)", c.NATSDedupWindow, c.NATSMaxAge)
		check(c.NATSPresenceTTL >= time.Second, "NATS_PRESENCE_TTL must be at least 1s, got %s", c.NATSPresenceTTL)
		check(c.NATSPublishTimeout > 0, "NATS_PUBLISH_TIMEOUT must be positive, got %s", c.NATSPublishTimeout)
		check(c.NATSMaxConsumers >= 1, "NATS_MAX_CONSUMERS must be at least 1, got %d", c.NATSMaxConsumers)
		check(c.NATSCatchUpMax >= c.HistorySize, "NATS_CATCHUP_MAX must be at least HISTORY_SIZE (%d), got %d", c.HistorySize, c.NATSCatchUpMax)
		check((c.NATSTLSCert == "") == (c.NATSTLSKey == ""), "NATS_TLS_CERT and NATS_TLS_KEY go together")
	}
	if c.RelayerURL != "" {
		u, err := url.Parse(c.RelayerURL)
		check(err == nil && (u.Scheme == "ws" || u.Scheme == "wss") && u.Host != "",
			"RELAYER_URL must look like ws://host:port, got %q", c.RelayerURL)
		check(len(c.RelaySecret) >= 8, "RELAY_SECRET (or RELAY_SECRET_FILE) must be set (8 bytes or more, the same as the relayer's) when RELAYER_URL is set")
		errs = append(errs, settings.CheckDevSecret("RELAY_SECRET", c.RelaySecret, c.DevMode))
	}
	check(c.AuthMode == "anonymous" || c.AuthMode == "required", "AUTH_MODE must be anonymous or required, got %q", c.AuthMode)
	keys := c.AuthHMACSecret != "" || c.AuthPublicKeys != "" || c.AuthJWKSURL != ""
	check(c.AuthMode != "required" || keys, "AUTH_MODE=required needs the keys tokens are signed with: AUTH_HMAC_SECRET, AUTH_PUBLIC_KEYS (or AUTH_PUBLIC_KEYS_FILE) or AUTH_JWKS_URL")
	check(c.AuthHMACSecret == "" || len(c.AuthHMACSecret) >= 32, "AUTH_HMAC_SECRET must be at least 32 bytes (for example $(openssl rand -hex 32))")
	check(c.AuthJWKSRefresh >= time.Second, "AUTH_JWKS_REFRESH must be at least 1s, got %s", c.AuthJWKSRefresh)
	check(c.AuthLeeway >= 0 && c.AuthLeeway <= 5*time.Minute, "AUTH_LEEWAY must be 0s..5m, got %s", c.AuthLeeway)
	check(c.AuthTimeout > 0, "AUTH_TIMEOUT must be positive, got %s", c.AuthTimeout)
	check(c.AuthExpiryNotice >= 0, "AUTH_EXPIRY_NOTICE must be 0s or positive, got %s", c.AuthExpiryNotice)
	check(c.AuthRevokeFor >= 0, "AUTH_REVOKE_FOR must be 0s (off) or positive, got %s", c.AuthRevokeFor)
	check(!c.AuthDevTokens || (c.DevMode && c.AuthHMACSecret != ""), "AUTH_DEV_TOKENS=true hands a token to anyone who asks: it needs DEV_MODE=true and AUTH_HMAC_SECRET (the tokens' key)")
	check(c.AuthDevTokenTTL >= 10*time.Second, "AUTH_DEV_TOKEN_TTL must be at least 10s, got %s", c.AuthDevTokenTTL)
	check(c.APIKey == "" || len(c.APIKey) >= 16, "API_KEY must be at least 16 bytes (for example $(openssl rand -hex 32))")
	check(c.APITimeout > 0, "API_TIMEOUT must be positive, got %s", c.APITimeout)
	check(c.HistorySize >= 0 && c.HistorySize <= 10000, "HISTORY_SIZE must be 0..10000, got %d", c.HistorySize)
	check(c.HistoryLimit >= c.HistorySize, "HISTORY_LIMIT (%d) must be at least HISTORY_SIZE (%d)", c.HistoryLimit, c.HistorySize)
	check(c.DedupWindow >= 0, "DEDUP_WINDOW must be 0 (off) or positive, got %d", c.DedupWindow)
	check(c.MaxFrameBytes >= 256, "MAX_FRAME_BYTES must be at least 256, got %d", c.MaxFrameBytes)
	check(c.MaxMessageBytes >= 1 && c.MaxMessageBytes < c.MaxFrameBytes,
		"MAX_MESSAGE_BYTES must be 1..MAX_FRAME_BYTES-1, got %d", c.MaxMessageBytes)
	// The relayer accepts names of up to 256 bytes; longer ones would be
	// accepted here and then never answered there.
	check(c.MaxRoomBytes >= 1 && c.MaxRoomBytes <= 256, "MAX_ROOM_NAME_BYTES must be 1..256, got %d", c.MaxRoomBytes)
	check(c.MaxNickBytes >= 1 && c.MaxNickBytes <= 256, "MAX_NICK_BYTES must be 1..256, got %d", c.MaxNickBytes)
	check(c.MaxRooms >= 1, "MAX_ROOMS must be positive, got %d", c.MaxRooms)
	check(c.RatePerSec > 0, "RATE_PER_SEC must be positive, got %g", c.RatePerSec)
	check(c.RateBurst >= 1, "RATE_BURST must be positive, got %d", c.RateBurst)
	check(c.FrameTimeout >= 0, "FRAME_READ_TIMEOUT must be 0s (off) or positive, got %s", c.FrameTimeout)
	check(c.RateCloseAfter >= 0, "RATE_LIMIT_CLOSE_AFTER must be 0s (never) or positive, got %s", c.RateCloseAfter)
	check(c.SendQueue >= 1, "SEND_QUEUE must be positive, got %d", c.SendQueue)
	check(c.SendQueueBytes >= 2*c.MaxFrameBytes, "SEND_QUEUE_BYTES must be at least twice MAX_FRAME_BYTES, got %d", c.SendQueueBytes)
	check(c.JoinTimeout > 0, "JOIN_TIMEOUT must be positive, got %s", c.JoinTimeout)
	check(c.MaxConnsPerAddr >= 0, "MAX_CONNS_PER_ADDR must be 0 (no bound) or positive, got %d", c.MaxConnsPerAddr)
	check(c.MaxConns >= 0, "MAX_CONNS must be 0 (the open-files limit less 256) or positive, got %d", c.MaxConns)
	check(c.WriteTimeout >= 0, "WRITE_TIMEOUT must be 0s (off) or positive, got %s", c.WriteTimeout)
	check(c.PresenceDelay >= 0 && c.PresenceDelay <= time.Second, "PRESENCE_DELAY must be 0s..1s, got %s", c.PresenceDelay)
	check(c.PendingMax >= 1, "RELAY_PENDING_MAX must be positive, got %d", c.PendingMax)
	check(c.RelayQueueBytes >= 1<<16, "RELAY_QUEUE_BYTES must be at least 65536, got %d", c.RelayQueueBytes)
	check(c.RelayPublishWait >= 0 && c.RelayPublishWait <= 30*time.Second, "RELAY_PUBLISH_WAIT must be 0s..30s, got %s", c.RelayPublishWait)
	check(c.RelayPing > 0, "RELAY_PING_INTERVAL must be positive")
	check(c.RelayFlush >= 0 && c.RelayFlush <= time.Second, "RELAY_FLUSH_DELAY must be 0s..1s, got %s", c.RelayFlush)
	check(c.ReconnectMin > 0 && c.ReconnectMax >= c.ReconnectMin, "RELAY_RECONNECT_MIN must be positive and at most RELAY_RECONNECT_MAX")
	check(c.ShutdownTimeout > 0, "SHUTDOWN_TIMEOUT must be positive")
	check(c.ReclaimQuiet >= 0, "MEMORY_RECLAIM_QUIET must be 0s (off) or positive, got %s", c.ReclaimQuiet)
	check(c.ReclaimMinBytes >= 1<<20, "MEMORY_RECLAIM_MIN_BYTES must be at least 1048576, got %d", c.ReclaimMinBytes)
	check(c.level.UnmarshalText([]byte(c.LogLevel)) == nil, "LOG_LEVEL must be debug, info, warn or error, got %q", c.LogLevel)
	return errors.Join(errs...)
}

// natsOptions are the NATS connection's credentials and TLS.
func natsOptions(c *Config) ([]nats.Option, error) {
	var opts []nats.Option
	if c.NATSUser != "" {
		opts = append(opts, nats.UserInfo(c.NATSUser, c.NATSPassword))
	}
	if c.NATSToken != "" {
		opts = append(opts, nats.Token(c.NATSToken))
	}
	if c.NATSCreds != "" {
		opts = append(opts, nats.UserCredentials(c.NATSCreds))
	}
	if c.NATSNKey != "" {
		o, err := nats.NkeyOptionFromSeed(c.NATSNKey)
		if err != nil {
			return nil, fmt.Errorf("NATS_NKEY: %w", err)
		}
		opts = append(opts, o)
	}
	if c.NATSTLSCA != "" {
		opts = append(opts, nats.RootCAs(c.NATSTLSCA))
	}
	if c.NATSTLSCert != "" {
		opts = append(opts, nats.ClientCert(c.NATSTLSCert, c.NATSTLSKey))
	}
	return opts, nil
}
