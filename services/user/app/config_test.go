package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"port", map[string]string{"PORT": "http"}, []string{`PORT="http" is not a valid int`}},
		{"port range", map[string]string{"PORT": "70000"}, []string{"PORT must be 0..65535"}},
		{"relayer url", map[string]string{"RELAYER_URL": "http://relayer", "RELAY_SECRET": "long enough"}, []string{"RELAYER_URL"}},
		{"secret with relayer", map[string]string{"RELAYER_URL": "ws://relayer:3001"}, []string{"RELAY_SECRET (or RELAY_SECRET_FILE) must be set"}},
		{"published secret", map[string]string{"RELAYER_URL": "ws://relayer:3001", "RELAY_SECRET": "dev-secret-123"}, []string{"RELAY_SECRET is a development secret", "DEV_MODE=true"}},
		{"old compose fallback", map[string]string{"RELAYER_URL": "ws://relayer:3001", "RELAY_SECRET": "dev-only-insecure-secret-change-me"}, []string{"RELAY_SECRET is a development secret"}},
		{"dev mode", map[string]string{"DEV_MODE": "sometimes"}, []string{`DEV_MODE="sometimes" is not a valid bool`}},
		{"secret and file", map[string]string{"RELAYER_URL": "ws://relayer:3001", "RELAY_SECRET": "long enough", "RELAY_SECRET_FILE": "/run/secrets/relay_secret"},
			[]string{"RELAY_SECRET and RELAY_SECRET_FILE are both set"}},
		{"missing secret file", map[string]string{"RELAYER_URL": "ws://relayer:3001", "RELAY_SECRET_FILE": "/nonexistent/relay_secret"},
			[]string{`RELAY_SECRET_FILE="/nonexistent/relay_secret": cannot open the file`}},
		{"history", map[string]string{"HISTORY_SIZE": "100", "HISTORY_LIMIT": "10"}, []string{"HISTORY_LIMIT (10) must be at least HISTORY_SIZE (100)"}},
		{"duration", map[string]string{"WRITE_TIMEOUT": "soon"}, []string{"WRITE_TIMEOUT"}},
		{"rate", map[string]string{"RATE_PER_SEC": "0"}, []string{"RATE_PER_SEC must be positive"}},
		{"publish wait", map[string]string{"RELAY_PUBLISH_WAIT": "1m"}, []string{"RELAY_PUBLISH_WAIT must be 0s..30s, got 1m0s"}},
		{"queue bytes", map[string]string{"SEND_QUEUE_BYTES": "1000"}, []string{"SEND_QUEUE_BYTES must be at least twice MAX_FRAME_BYTES"}},
		{"proxies", map[string]string{"TRUSTED_PROXIES": "nowhere"}, []string{"TRUSTED_PROXIES"}},
		{"level", map[string]string{"LOG_LEVEL": "loud"}, []string{`LOG_LEVEL must be debug, info, warn or error, got "loud"`}},
		{"bus", map[string]string{"BUS": "kafka"}, []string{`BUS must be relayer, nats or local, got "kafka"`}},
		{"relayer bus", map[string]string{"BUS": "relayer"}, []string{"BUS=relayer needs RELAYER_URL"}},
		{"nats bus", map[string]string{"BUS": "nats"}, []string{"BUS=nats needs NATS_URL"}},
		{"nats url", map[string]string{"BUS": "nats", "NATS_URL": "nats://a:4222,http://b"}, []string{`NATS_URL entries must look like nats://host:4222, got "http://b"`}},
		{"nats replicas", map[string]string{"BUS": "nats", "NATS_URL": "nats://a:4222", "NATS_REPLICAS": "0"}, []string{"NATS_REPLICAS must be 1..5"}},
		{"nats max consumers", map[string]string{"BUS": "nats", "NATS_URL": "nats://a:4222", "NATS_MAX_CONSUMERS": "0"}, []string{"NATS_MAX_CONSUMERS must be at least 1"}},
		{"nats tls", map[string]string{"BUS": "nats", "NATS_URL": "nats://a:4222", "NATS_TLS_CERT": "c.pem"}, []string{"NATS_TLS_CERT and NATS_TLS_KEY go together"}},
		{"several at once", map[string]string{"MAX_ROOMS": "0", "JOIN_TIMEOUT": "0s"}, []string{"MAX_ROOMS", "JOIN_TIMEOUT"}},
		{"auth mode", map[string]string{"AUTH_MODE": "maybe"}, []string{`AUTH_MODE must be anonymous or required, got "maybe"`}},
		{"required without keys", map[string]string{"AUTH_MODE": "required"}, []string{"AUTH_MODE=required needs the keys"}},
		{"short hmac secret", map[string]string{"AUTH_HMAC_SECRET": "short"}, []string{"AUTH_HMAC_SECRET must be at least 32 bytes"}},
		{"dev tokens outside development", map[string]string{"AUTH_DEV_TOKENS": "true", "AUTH_HMAC_SECRET": strings.Repeat("k", 32)}, []string{"AUTH_DEV_TOKENS=true", "DEV_MODE=true"}},
		{"dev tokens without a key", map[string]string{"AUTH_DEV_TOKENS": "true", "DEV_MODE": "true"}, []string{"AUTH_DEV_TOKENS=true", "AUTH_HMAC_SECRET"}},
		{"short api key", map[string]string{"API_KEY": "abc"}, []string{"API_KEY must be at least 16 bytes"}},
		{"api key and file", map[string]string{"API_KEY": strings.Repeat("k", 16), "API_KEY_FILE": "/run/secrets/api_key"}, []string{"API_KEY and API_KEY_FILE are both set"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.env["INSTANCE_ID"] = "test"
			_, err := loadConfig(func(k string) string { return tc.env[k] })
			if err == nil {
				t.Fatal("loadConfig accepted the configuration")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	cfg, err := loadConfig(func(k string) string { return map[string]string{"INSTANCE_ID": "test", "LOG_LEVEL": "debug"}[k] })
	if err != nil || cfg.level.String() != "DEBUG" || cfg.HistorySize != 50 {
		t.Fatalf("defaults: %v, level %v, HISTORY_SIZE %d", err, cfg.level, cfg.HistorySize)
	}
}

// RELAY_SECRET may come from a file (a Docker secret), and a published
// development secret is accepted in development mode only.
func TestConfigRelaySecret(t *testing.T) {
	file := filepath.Join(t.TempDir(), "relay_secret")
	if err := os.WriteFile(file, []byte("secret-from-a-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"from a file", map[string]string{"RELAY_SECRET_FILE": file}, "secret-from-a-file"},
		{"dev secret in dev mode", map[string]string{"RELAY_SECRET": "dev-secret-123", "DEV_MODE": "true"}, "dev-secret-123"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.env["INSTANCE_ID"], tc.env["RELAYER_URL"] = "test", "ws://relayer:3001"
			cfg, err := loadConfig(func(k string) string { return tc.env[k] })
			if err != nil || cfg.RelaySecret != tc.want {
				t.Fatalf("loadConfig: %v, RELAY_SECRET %q, want %q", err, cfg.RelaySecret, tc.want)
			}
		})
	}
	// Standalone (no RELAYER_URL) the secret is not used, nor checked.
	cfg, err := loadConfig(func(k string) string {
		return map[string]string{"INSTANCE_ID": "test", "RELAY_SECRET": "dev-secret-123"}[k]
	})
	if err != nil || cfg.DevMode {
		t.Fatalf("standalone with an unused dev secret: %v, DEV_MODE %v (default false)", err, cfg.DevMode)
	}
}
