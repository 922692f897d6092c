package natsbus_test

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/bus/bustest"
	"github.com/wschat/wschat/services/user/internal/natsbus"
)

// startNATS runs a NATS server with JetStream, in process, until t ends,
// and returns its client URL.
func startNATS(t *testing.T) string { return startNATSWith(t, server.JSLimitOpts{}) }

// startNATSWith is startNATS with JetStream limits of its own.
func startNATSWith(t *testing.T, limits server.JSLimitOpts) string {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
		JetStreamLimits: limits,
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready within 10s")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s.ClientURL()
}

func config(url, instance string) natsbus.Config {
	return natsbus.Config{
		URLs: []string{url}, Instance: instance, Stream: "wschat", Bucket: "wschat_presence", Replicas: 1,
		DedupWindow: time.Minute, PresenceTTL: 2 * time.Second, PendingMax: 100, HistoryLimit: 100,
		PublishTimeout: 5 * time.Second, Timeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// The NATS bus, on a real NATS server with JetStream, passes the table
// every bus passes.
func TestNATSIsABus(t *testing.T) {
	bustest.Run(t, bustest.PerCase(startNATS, func(url, instance string, h bus.Handler) bus.Bus {
		return natsbus.New(config(url, instance), h)
	}))
}
