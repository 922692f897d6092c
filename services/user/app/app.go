// Package app is the ws-user service as a function: Run starts it and
// returns when ctx ends, so a test can start as many instances as it needs.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/reclaim"
	"github.com/wschat/wschat/services/settings"
	"github.com/wschat/wschat/services/user/internal/api"
	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/conn"
	"github.com/wschat/wschat/services/user/internal/hub"
	"github.com/wschat/wschat/services/user/internal/listen"
	"github.com/wschat/wschat/services/user/internal/natsbus"
	"github.com/wschat/wschat/services/user/internal/relay"
	"github.com/wschat/wschat/services/user/internal/web"
)

// Run runs ws-user until ctx ends. args[1] "healthcheck" probes a running
// instance instead (for container health checks, which have no shell).
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 1 && args[1] == "healthcheck" {
		return healthcheck(ctx, getenv, stdout)
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.level})).
		With("service", "ws-user", "instance", cfg.InstanceID)
	if cfg.DevMode {
		log.Warn("DEV_MODE=true: DEVELOPMENT MODE, the published development secrets are accepted as RELAY_SECRET; never run so where others can reach the service",
			"dev_secret_in_use", settings.IsDevSecret(cfg.RelaySecret))
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	connCfg := conn.Config{
		MaxFrame:            int64(cfg.MaxFrameBytes),
		Rules:               protocol.Rules{MaxRoomBytes: cfg.MaxRoomBytes, MaxNickBytes: cfg.MaxNickBytes, MaxMessageBytes: cfg.MaxMessageBytes},
		SendQueue:           cfg.SendQueue,
		SendQueueBytes:      cfg.SendQueueBytes,
		RatePerSec:          cfg.RatePerSec,
		RateBurst:           cfg.RateBurst,
		RateLimitCloseAfter: cfg.RateCloseAfter,
		FrameReadTimeout:    cfg.FrameTimeout,
		LazyDelay:           cfg.PresenceDelay,
		MaxConns:            cfg.MaxConns,
		MaxConnsPerAddr:     cfg.MaxConnsPerAddr,
		TrustedProxies:      cfg.Trusted,
		Origins:             cfg.AllowedOrigins,
		WriteTimeout:        cfg.WriteTimeout,
		Logger:              log,
		Metrics:             conn.NewMetrics(reg),
	}
	verifier, err := newVerifier(ctx, &cfg, log)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	h := hub.New(hub.Config{
		Instance:     cfg.InstanceID,
		HistorySize:  cfg.HistorySize,
		HistoryLimit: cfg.HistoryLimit,
		MaxRooms:     cfg.MaxRooms,
		Limits:       connCfg.Limits(),
		JoinTimeout:  cfg.JoinTimeout,
		Auth:         verifier,
		RequireAuth:  cfg.AuthMode == "required",
		AuthTimeout:  cfg.AuthTimeout,
		ExpiryNotice: cfg.AuthExpiryNotice,
		RevokeFor:    cfg.AuthRevokeFor,
		Control:      cfg.AuthRevokeFor > 0, // else nothing kept counts
		Logger:       log,
		Metrics:      hub.NewMetrics(reg),
	})
	conns := conn.New(connCfg, h)
	var b bus.Bus
	mode := cfg.busMode()
	switch mode {
	case "local":
		b = bus.NewLocal(h, cfg.HistoryLimit).WithDedupWindow(cfg.DedupWindow)
	case "relayer":
		b = relay.New(relay.Config{
			URL: cfg.RelayerURL, Secret: cfg.RelaySecret, Instance: cfg.InstanceID,
			PendingMax: cfg.PendingMax, QueueBytes: cfg.RelayQueueBytes, PublishWait: cfg.RelayPublishWait, MaxFrame: 128 << 20,
			PingInterval: cfg.RelayPing, FlushDelay: cfg.RelayFlush, MinBackoff: cfg.ReconnectMin, MaxBackoff: cfg.ReconnectMax,
			Logger: log,
		}, h)
	case "nats":
		opts, err := natsOptions(&cfg)
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		b = natsbus.New(natsbus.Config{
			URLs: cfg.NATSURL, Instance: cfg.InstanceID, Options: opts,
			Stream: cfg.NATSStream, Bucket: cfg.NATSStream + "_presence", Replicas: cfg.NATSReplicas,
			MaxBytes: cfg.NATSMaxBytes, MaxAge: cfg.NATSMaxAge, DedupWindow: cfg.NATSDedupWindow, MaxConsumers: cfg.NATSMaxConsumers,
			PresenceTTL: cfg.NATSPresenceTTL, PendingMax: cfg.PendingMax, HistoryLimit: cfg.HistoryLimit,
			PublishWait: cfg.RelayPublishWait, PublishTimeout: cfg.NATSPublishTimeout, CatchUpMax: cfg.NATSCatchUpMax, Logger: log,
		}, h)
	}
	h.SetBus(b)

	ln, err := listen.TCP(ctx, net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)), listen.Config{})
	if err != nil {
		conns.Shutdown(ctx) // no client yet: frees the poller
		return err
	}
	srv := &http.Server{Handler: routes(&cfg, conns, h, b, reg, log), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	busCtx, stopBus := context.WithCancel(context.Background())
	busDone := make(chan struct{})
	go func() {
		defer close(busDone)
		if err := b.Run(busCtx); err != nil {
			log.Error("bus stopped", "err", err)
		}
	}()
	hubDone := make(chan struct{})
	go func() {
		defer close(hubDone)
		h.Run(busCtx)
	}()
	controlDone := make(chan struct{})
	go func() {
		defer close(controlDone)
		h.RunControl(busCtx)
	}()
	connsDone := make(chan struct{})
	go func() {
		defer close(connsDone)
		conns.Run(busCtx)
	}()
	reclaims := prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_memory_reclaims_total",
		Help: "Times free memory was returned to the system after a burst of allocation (MEMORY_RECLAIM_QUIET)."})
	reg.MustRegister(reclaims)
	reclaimDone := make(chan struct{})
	go func() {
		defer close(reclaimDone)
		reclaim.Run(busCtx, reclaim.Config{Quiet: cfg.ReclaimQuiet, MinBytes: cfg.ReclaimMinBytes, Reclaimed: func(took time.Duration) {
			reclaims.Inc()
			log.Debug("memory reclaimed", "took", took)
		}})
	}()
	if cfg.DebugAddr != "" {
		// Profiles on their own listener, never on the public port.
		dbg := &http.Server{Addr: cfg.DebugAddr, Handler: debugRoutes(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := dbg.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("debug listener failed", "addr", cfg.DebugAddr, "err", err)
			}
		}()
		defer dbg.Close()
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "mode", mode, "max_conns", cfg.MaxConns, "max_conns_per_addr", cfg.MaxConnsPerAddr)

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		log.Error("server failed", "err", err)
	}
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil {
		log.Warn("http shutdown", "err", serr)
	}
	conns.Refuse()
	h.Shutdown(sctx)
	conns.Shutdown(sctx)
	stopBus()
	<-busDone
	<-hubDone
	<-controlDone
	<-connsDone
	<-reclaimDone
	log.Info("stopped")
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func routes(cfg *Config, conns *conn.Server, h *hub.Hub, b bus.Bus, reg *prometheus.Registry, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	var keys [][]byte
	if cfg.APIKey != "" {
		keys = append(keys, []byte(cfg.APIKey))
	}
	mux.Handle(api.Prefix, api.Handler(api.Config{Keys: keys, Rules: protocol.Rules{MaxRoomBytes: cfg.MaxRoomBytes,
		MaxNickBytes: cfg.MaxNickBytes, MaxMessageBytes: cfg.MaxMessageBytes}, Timeout: cfg.APITimeout, Logger: log}, h))
	if cfg.AuthDevTokens {
		mux.Handle("GET /auth/token", devTokens(cfg))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !b.Ready() {
			http.Error(w, "relay link down", http.StatusServiceUnavailable)
			return
		}
		if !h.ControlReady() {
			// Not before the disconnects it missed are known: their
			// users' old tokens would be accepted here.
			http.Error(w, "control room not read yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/ws", conns)
	page := web.Handler()
	// "/" also upgrades, for the original clients that dial ws://host:8080.
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			conns.ServeHTTP(w, r)
			return
		}
		page.ServeHTTP(w, r)
	})
	return mux
}

func debugRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func healthcheck(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	port := getenv("PORT")
	if port == "" {
		port = "8080"
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+port+"/healthz", nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: /healthz answered %s", resp.Status)
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}
