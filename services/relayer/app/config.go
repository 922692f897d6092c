package app

import (
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/wschat/wschat/services/protocol/link"
)

// config is ws-relayer's whole configuration, from the environment only.
type config struct {
	Host              string        `env:"HOST"`
	Port              int           `env:"PORT" envDefault:"3001"`
	RelaySecret       string        `env:"RELAY_SECRET"`
	DataDir           string        `env:"DATA_DIR" envDefault:"./data"`
	HistoryLimit      int           `env:"HISTORY_LIMIT" envDefault:"1000"`
	DedupWindow       int           `env:"DEDUP_WINDOW" envDefault:"100000"`
	PresenceGrace     time.Duration `env:"PRESENCE_GRACE" envDefault:"5s"`
	Fsync             bool          `env:"RELAY_FSYNC" envDefault:"true"`
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

	level slog.Level
}

const minSecretBytes = 8

// environment collects the variables config reads through getenv: env
// parses a map, and tests pass a getenv that is not the process's.
func environment(v any, getenv func(string) string) (map[string]string, error) {
	params, err := env.GetFieldParams(v)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(params))
	for _, p := range params {
		// An empty variable counts as unset, so that "PORT=" in a
		// compose file means the default rather than an error.
		if val := getenv(p.Key); val != "" {
			m[p.Key] = val
		}
	}
	return m, nil
}

func loadConfig(getenv func(string) string) (config, error) {
	var c config
	vars, err := environment(&c, getenv)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	if err := env.ParseWithOptions(&c, env.Options{Environment: vars}); err != nil {
		return c, fmt.Errorf("invalid configuration: %w", explain(err, vars))
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch {
	case c.RelaySecret == "":
		bad("RELAY_SECRET is required: set it to a shared secret of at least %d bytes, the same on ws-relayer and every ws-user (for example RELAY_SECRET=$(openssl rand -hex 32)); the relayer never runs open", minSecretBytes)
	case len(c.RelaySecret) < minSecretBytes:
		bad("RELAY_SECRET is %d bytes; it must be at least %d (for example RELAY_SECRET=$(openssl rand -hex 32))", len(c.RelaySecret), minSecretBytes)
	}
	if c.Port < 0 || c.Port > 65535 {
		bad("PORT must be 0..65535, got %d", c.Port)
	}
	if c.DataDir == "" {
		bad("DATA_DIR must not be empty")
	}
	if c.DedupWindow < 0 {
		bad("DEDUP_WINDOW must be >= 0, got %d", c.DedupWindow)
	}
	if c.HistoryLimit <= 0 {
		bad("HISTORY_LIMIT must be > 0, got %d", c.HistoryLimit)
	}
	if c.PresenceGrace < 0 {
		bad("PRESENCE_GRACE must not be negative, got %s", c.PresenceGrace)
	}
	if c.LinkQueueBytes <= 0 {
		bad("LINK_QUEUE_BYTES must be > 0, got %d", c.LinkQueueBytes)
	}
	if c.LinkMaxFrameBytes < link.MaxMessage {
		bad("LINK_MAX_FRAME_BYTES must be at least %d (ws-user sends link messages of up to 1 MiB), got %d", link.MaxMessage, c.LinkMaxFrameBytes)
	}
	if c.LinkPingInterval <= 0 {
		bad("LINK_PING_INTERVAL must be > 0, got %s", c.LinkPingInterval)
	}
	if c.LinkFlushDelay < 0 || c.LinkFlushDelay > time.Second {
		bad("LINK_FLUSH_DELAY must be 0s..1s, got %s", c.LinkFlushDelay)
	}
	if c.CompactBytes <= 0 {
		bad("COMPACT_BYTES must be > 0, got %d", c.CompactBytes)
	}
	if c.RetentionBytes < 0 {
		bad("RETENTION_BYTES must be >= 0 (0 keeps only HISTORY_LIMIT messages per room), got %d", c.RetentionBytes)
	}
	if c.RetentionAge < 0 {
		bad("RETENTION_AGE must be 0s (no age bound) or positive, got %s", c.RetentionAge)
	}
	if c.LinkInflightBytes <= 0 {
		bad("LINK_INFLIGHT_BYTES must be > 0, got %d", c.LinkInflightBytes)
	}
	if c.ShutdownTimeout <= 0 {
		bad("SHUTDOWN_TIMEOUT must be > 0, got %s", c.ShutdownTimeout)
	}
	if c.ReclaimQuiet < 0 {
		bad("MEMORY_RECLAIM_QUIET must be 0s (off) or positive, got %s", c.ReclaimQuiet)
	}
	if c.ReclaimMinBytes < 1<<20 {
		bad("MEMORY_RECLAIM_MIN_BYTES must be at least 1048576, got %d", c.ReclaimMinBytes)
	}
	if err := c.level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		bad("LOG_LEVEL must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("invalid configuration: %w", errors.Join(errs...))
	}
	return c, nil
}

// explain renames env's parse errors, which name Go struct fields, after
// the variables an operator actually sets.
func explain(err error, vars map[string]string) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return err
	}
	t := reflect.TypeFor[config]()
	out := make([]error, 0, len(agg.Errors))
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			if f, ok := t.FieldByName(pe.Name); ok {
				key := f.Tag.Get("env")
				e = fmt.Errorf("%s=%q is not a valid %s: %w", key, vars[key], pe.Type, pe.Err)
			}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}
