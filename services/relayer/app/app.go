// Package app is ws-relayer as a function: Run starts the whole service and
// returns when it has stopped, so tests run it in-process on port 0.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/reclaim"
	"github.com/wschat/wschat/services/relayer/internal/linkserver"
	"github.com/wschat/wschat/services/relayer/internal/sequencer"
	"github.com/wschat/wschat/services/relayer/internal/store"
	"github.com/wschat/wschat/services/settings"
)

// Run runs ws-relayer until ctx ends (a graceful shutdown), or runs the
// sub-command args[1] names ("healthcheck").
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 1 {
		switch args[1] {
		case "healthcheck":
			return healthcheck(ctx, getenv, stdout)
		default:
			return fmt.Errorf("unknown sub-command %q: run ws-relayer without arguments, or \"ws-relayer healthcheck\"", args[1])
		}
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.level}))
	if cfg.DevMode {
		log.Warn("DEV_MODE=true: DEVELOPMENT MODE, the published development secrets are accepted as RELAY_SECRET; never run so where others can reach the relayer",
			"dev_secret_in_use", settings.IsDevSecret(cfg.RelaySecret))
	}

	st, err := store.Open(cfg.DataDir, store.Options{Fsync: cfg.Fsync, Logger: log})
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	seq, err := sequencer.New(sequencer.Config{
		HistoryLimit:   cfg.HistoryLimit,
		DedupWindow:    cfg.DedupWindow,
		PresenceGrace:  cfg.PresenceGrace,
		QueueBytes:     cfg.LinkQueueBytes,
		InflightBytes:  cfg.LinkInflightBytes,
		CompactBytes:   cfg.CompactBytes,
		RetentionBytes: cfg.RetentionBytes,
		RetentionAge:   cfg.RetentionAge,
		CommitDelay:    cfg.CommitDelay,
		Logger:         log,
		Registry:       reg,
	}, st)
	if err != nil {
		st.Close()
		return err
	}
	links, err := linkserver.New(linkserver.Config{
		Secret:        cfg.RelaySecret,
		MaxFrameBytes: cfg.LinkMaxFrameBytes,
		PingInterval:  cfg.LinkPingInterval,
		FlushDelay:    cfg.LinkFlushDelay,
		Logger:        log,
		Registry:      reg,
	}, seq)
	if err != nil {
		st.Close()
		return err
	}

	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		st.Close()
		return fmt.Errorf("listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !seq.Ready() {
			http.Error(w, "not ready: the sequencer is stopped", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.Handle("GET "+link.Path, links)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	seqCtx, stopSeq := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSeq()
	seqDone := make(chan error, 1)
	go func() { seqDone <- seq.Run(seqCtx) }()
	reclaims := prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_relayer_memory_reclaims_total",
		Help: "Times free memory was returned to the system after a burst of allocation (MEMORY_RECLAIM_QUIET)."})
	reg.MustRegister(reclaims)
	reclaimDone := make(chan struct{})
	defer func() {
		stopSeq() // ends reclaim.Run too
		<-reclaimDone
	}()
	go func() {
		defer close(reclaimDone)
		reclaim.Run(seqCtx, reclaim.Config{Quiet: cfg.ReclaimQuiet, MinBytes: cfg.ReclaimMinBytes, Reclaimed: func(took time.Duration) {
			reclaims.Inc()
			log.Debug("memory reclaimed", "took", took)
		}})
	}()
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "data_dir", cfg.DataDir, "fsync", cfg.Fsync,
		"retention_bytes", cfg.RetentionBytes, "retention_age", cfg.RetentionAge)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	case err := <-seqDone:
		seqDone <- err // collected again below
		log.Error("sequencer stopped; shutting down", "err", err)
	case err := <-srvDone:
		runErr = fmt.Errorf("http server: %w", err)
		log.Error("http server failed; shutting down", "err", err)
	}

	// Stop accepting first, then let the sequencer close every link with
	// 1012 after delivering what it owes them, and close the log.
	deadline, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(deadline); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("http shutdown", "err", err)
	}
	stopSeq()
	select {
	case err := <-seqDone:
		if err != nil {
			runErr = errors.Join(runErr, err)
		}
	case <-deadline.Done():
		// A hung fsync or a long compaction must not hold the process
		// past its shutdown budget.
		runErr = errors.Join(runErr, fmt.Errorf("sequencer did not stop within %v", cfg.ShutdownTimeout))
	}
	if err := links.WaitLinks(deadline); err != nil {
		log.Warn("shutdown", "err", err)
	}
	srv.Close()
	if runErr != nil {
		return runErr
	}
	log.Info("stopped")
	return nil
}

// healthcheck is the image's HEALTHCHECK: the image has no shell or curl.
func healthcheck(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	port := getenv("PORT")
	if port == "" {
		port = "3001"
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("healthcheck: PORT must be 1..65535, got %q", port)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort("127.0.0.1", port) + "/healthz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	// No proxy: the target is this container's own loopback.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %s", url, resp.Status)
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}
