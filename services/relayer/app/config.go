package app

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/wschat/wschat/services/settings"

	"github.com/wschat/wschat/services/protocol/link"
)

// Config is ws-relayer's whole configuration, read from the environment only.
type Config struct {
	Host              string        `env:"HOST"`
	Port              int           `env:"PORT" envDefault:"3001"`
	RelaySecret       string        `env:"RELAY_SECRET" settings:"file"` // or RELAY_SECRET_FILE
	DevMode           bool          `env:"DEV_MODE" envDefault:"false"`
	DataDir           string        `env:"DATA_DIR" envDefault:"./data"`
	HistoryLimit      int           `env:"HISTORY_LIMIT" envDefault:"1000"`
	DedupWindow       int           `env:"DEDUP_WINDOW" envDefault:"100000"`
	PresenceGrace     time.Duration `env:"PRESENCE_GRACE" envDefault:"5s"`
	Fsync             bool          `env:"RELAY_FSYNC" envDefault:"true"`
	CommitDelay       time.Duration `env:"RELAY_COMMIT_DELAY" envDefault:"0s"`
	LinkQueueBytes    int           `env:"LINK_QUEUE_BYTES" envDefault:"67108864"`
	LinkMaxFrameBytes int64         `env:"LINK_MAX_FRAME_BYTES" envDefault:"16777216"`
	LinkInflightBytes int64         `env:"LINK_INFLIGHT_BYTES" envDefault:"33554432"`
	LinkPingInterval  time.Duration `env:"LINK_PING_INTERVAL" envDefault:"5s"`
	LinkFlushDelay    time.Duration `env:"LINK_FLUSH_DELAY" envDefault:"0s"`
	CompactBytes      int64         `env:"COMPACT_BYTES" envDefault:"67108864"`
	RetentionBytes    int64         `env:"RETENTION_BYTES" envDefault:"67108864"`
	RetentionAge      time.Duration `env:"RETENTION_AGE" envDefault:"168h"`
	ShutdownTimeout   time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"10s"`
	ReclaimQuiet      time.Duration `env:"MEMORY_RECLAIM_QUIET" envDefault:"2s"`
	ReclaimMinBytes   uint64        `env:"MEMORY_RECLAIM_MIN_BYTES" envDefault:"16777216"`
	LogLevel          string        `env:"LOG_LEVEL" envDefault:"info"`

	// level is LogLevel parsed (loadConfig).
	level slog.Level
}

const minSecretBytes = 8

// loadConfig reads Config through getenv, so tests need no process
// environment, and checks it before anything listens.
func loadConfig(getenv func(string) string) (Config, error) {
	var c Config
	if err := settings.Load(&c, getenv); err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	if err := c.validate(); err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

func (c *Config) validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	switch {
	case c.RelaySecret == "":
		check(false, "RELAY_SECRET is required: set it to a shared secret of at least %d bytes, the same on ws-relayer and every ws-user (the output of openssl rand -hex 32, for example, as RELAY_SECRET in .env, where make up writes one when there is none), "+
			"or RELAY_SECRET_FILE to a file that holds it (a Docker secret: docker-compose.secrets.yml); the relayer never runs open", minSecretBytes)
	case len(c.RelaySecret) < minSecretBytes:
		check(false, "RELAY_SECRET is %d bytes; it must be at least %d (for example RELAY_SECRET=$(openssl rand -hex 32))", len(c.RelaySecret), minSecretBytes)
	default:
		errs = append(errs, settings.CheckDevSecret("RELAY_SECRET", c.RelaySecret, c.DevMode))
	}
	check(c.Port >= 0 && c.Port <= 65535, "PORT must be 0..65535, got %d", c.Port)
	check(c.DataDir != "", "DATA_DIR must not be empty")
	check(c.DedupWindow >= 0, "DEDUP_WINDOW must be 0 (off) or positive, got %d", c.DedupWindow)
	check(c.HistoryLimit > 0, "HISTORY_LIMIT must be positive, got %d", c.HistoryLimit)
	check(c.PresenceGrace >= 0, "PRESENCE_GRACE must not be negative, got %s", c.PresenceGrace)
	check(c.LinkQueueBytes > 0, "LINK_QUEUE_BYTES must be positive, got %d", c.LinkQueueBytes)
	check(c.LinkMaxFrameBytes >= link.MaxMessage,
		"LINK_MAX_FRAME_BYTES must be at least %d (ws-user sends link messages of up to 1 MiB), got %d", link.MaxMessage, c.LinkMaxFrameBytes)
	check(c.LinkPingInterval > 0, "LINK_PING_INTERVAL must be positive, got %s", c.LinkPingInterval)
	check(c.LinkFlushDelay >= 0 && c.LinkFlushDelay <= time.Second, "LINK_FLUSH_DELAY must be 0s..1s, got %s", c.LinkFlushDelay)
	check(c.CommitDelay >= 0 && c.CommitDelay <= 100*time.Millisecond, "RELAY_COMMIT_DELAY must be 0s..100ms, got %s", c.CommitDelay)
	check(c.CompactBytes > 0, "COMPACT_BYTES must be positive, got %d", c.CompactBytes)
	check(c.RetentionBytes >= 0, "RETENTION_BYTES must be 0 (only HISTORY_LIMIT messages per room) or positive, got %d", c.RetentionBytes)
	check(c.RetentionAge >= 0, "RETENTION_AGE must be 0s (no age bound) or positive, got %s", c.RetentionAge)
	check(c.LinkInflightBytes > 0, "LINK_INFLIGHT_BYTES must be positive, got %d", c.LinkInflightBytes)
	check(c.ShutdownTimeout > 0, "SHUTDOWN_TIMEOUT must be positive, got %s", c.ShutdownTimeout)
	check(c.ReclaimQuiet >= 0, "MEMORY_RECLAIM_QUIET must be 0s (off) or positive, got %s", c.ReclaimQuiet)
	check(c.ReclaimMinBytes >= 1<<20, "MEMORY_RECLAIM_MIN_BYTES must be at least 1048576, got %d", c.ReclaimMinBytes)
	check(c.level.UnmarshalText([]byte(c.LogLevel)) == nil, "LOG_LEVEL must be debug, info, warn or error, got %q", c.LogLevel)
	return errors.Join(errs...)
}
