// Package app assembles prefetchd from its components and runs it: it starts
// the embedded broker and store when no real ones are named, loads the model,
// builds the pipeline (consumer → engine → warmer), serves gRPC and the admin
// HTTP port, and stops everything in a stated order.
package app

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/broker"
	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/engine"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/internal/server"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
	"github.com/prefetchd/prefetchd/training"
)

// Addrs are the addresses the running service bound, for tests and logs.
type Addrs struct {
	GRPC, Admin, Kafka, Redis string
}

// Options are test hooks; the zero value is what the binary uses.
type Options struct {
	// Ready, when set, receives the bound addresses once the service serves.
	Ready func(Addrs)
	// Registerer replaces the service's own Prometheus registry.
	Registry *prometheus.Registry
}

// Run runs the service until ctx ends, then shuts down in this order: health
// to NOT_SERVING, drain gRPC (with a deadline), stop the replay, stop
// consuming (the consumer commits what is done), flush the cache writer, stop
// watching the model repository. It returns the first error that stopped a
// component early.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	return RunWith(ctx, cfg, log, Options{})
}

// RunWith is Run with test hooks.
func RunWith(ctx context.Context, cfg Config, log *slog.Logger, opts Options) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	var addrs Addrs

	// Backends: the in-process ones when no real ones are named.
	brokers := cfg.KafkaBrokers
	if cfg.Embedded() {
		b, err := broker.Start(broker.Config{Topics: []string{cfg.Topic}, Partitions: 4})
		if err != nil {
			return err
		}
		defer b.Close()
		brokers = []string{b.Addr()}
		log.Info("in-process kafka broker started", "addr", b.Addr(), "topic", cfg.Topic)
	}
	addrs.Kafka = brokers[0]
	redisAddr := cfg.RedisAddr
	if redisAddr == "" {
		m, err := embedded.StartRedis()
		if err != nil {
			return err
		}
		defer m.Close()
		redisAddr = m.Addr()
		log.Info("in-process redis store started", "addr", redisAddr)
	}
	addrs.Redis = redisAddr
	rdb, err := redisClient(cfg, redisAddr)
	if err != nil {
		return err
	}
	defer rdb.Close()
	kafkaTLS, kafkaSASL, err := kafkaSecurity(cfg)
	if err != nil {
		return err
	}
	dialer := kafkaDialer(kafkaTLS, kafkaSASL)

	// The model.
	models, err := openModels(ctx, cfg, log, reg)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	lcCtx, stopModels := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		stopModels()
		wg.Wait()
	}()
	wg.Go(func() {
		if err := models.Run(lcCtx); err != nil {
			errc <- fmt.Errorf("model repository: %w", err)
		}
	})
	live, err := waitForModel(ctx, log, models)
	if err != nil {
		return err
	}
	log.Info("model loaded", "name", live.Manifest.Name, "version", live.Version, "vocab", live.Vocab.Len(), "max_seq_len", live.Manifest.MaxSeqLen)

	// The pipeline.
	hist, err := features.NewStore(features.StoreConfig{
		Backend: cfg.HistoryStore,
		History: features.HistoryConfig{MaxLen: live.Manifest.MaxSeqLen, MaxUsers: cfg.HistoryMaxUsers, SessionGap: cfg.SessionGap},
	}, rdb, reg)
	if err != nil {
		return err
	}
	canon, err := canonicalizer(cfg)
	if err != nil {
		return err
	}
	pcfg := prefetch.PolicyConfig{K: cfg.K, KSet: true, Threshold: cfg.Threshold, ThresholdSet: true}
	if cfg.CostWeights != "" {
		if pcfg.CostWeights, err = readWeights(cfg.CostWeights); err != nil {
			return err
		}
		pcfg.UseExpectedUtility = true
	}
	policy, err := prefetch.NewPolicy(pcfg)
	if err != nil {
		return err
	}
	eval, err := prefetch.NewEvaluator(prefetch.EvaluatorConfig{KeyTemplate: cfg.KeyTemplate}, reg)
	if err != nil {
		return err
	}
	warmer, err := prefetch.NewWarmer(prefetch.Config{
		Mode: prefetch.Mode(cfg.PrefetchMode), OriginURL: cfg.OriginURL, TTL: cfg.TTL, KeyTemplate: cfg.KeyTemplate,
		GlobalRate: cfg.GlobalRate, PerUserRate: cfg.PerUserRate, BudgetKeys: cfg.BudgetKeys,
	}, rdb, log, reg)
	if err != nil {
		return err
	}
	warmer.SetObserver(eval)
	models.OnSwap(func(_, l *lifecycle.Live) {
		if l != nil {
			eval.SetModelVersion(l.Version)
		}
	})
	eval.SetModelVersion(live.Version)
	eng, err := engine.New(engine.Config{}, engine.Deps{
		Models: models, Histories: hist, Canon: canon, Policy: policy, Warmer: warmer, Evaluator: eval,
	}, log, reg)
	if err != nil {
		return err
	}
	// Partition marks live where the histories do: a restart with shared
	// histories must still tell redeliveries from offsets that went back.
	var marks features.Marks = features.NewMemoryMarks()
	if cfg.HistoryStore == features.BackendRedis {
		marks = features.NewRedisMarks(rdb, features.DefaultKeyPrefix, cfg.Group, cfg.Topic)
	}
	consumer, err := features.NewConsumer(features.ConsumerConfig{
		Brokers: brokers, Topic: cfg.Topic, GroupID: cfg.Group, DeadLetterTopic: cfg.DeadLetterTopic, Dialer: dialer,
		Workers: cfg.Workers, BatchSize: cfg.IngestBatch, EventIDCache: cfg.EventIDCache, CommitInterval: cfg.CommitInterval, CommitBatch: cfg.CommitBatch,
		SessionTimeout: cfg.KafkaSessionTimeout, HeartbeatInterval: cfg.KafkaHeartbeatInterval,
		Decoder: features.DecoderConfig{MaxSkew: cfg.MaxSkew}, Marks: marks,
	}, eng, log, reg)
	if err != nil {
		return err
	}
	defer consumer.Close()

	// Servers.
	scfg := server.Config{
		TLSCertFile: cfg.TLSCert, TLSKeyFile: cfg.TLSKey, TLSClientCAFile: cfg.TLSClientCA,
		RequireClientCert: cfg.TLSClientCA != "", AllowedClientCNs: cfg.AdminClientCNs,
	}
	if cfg.AdminTokenFile != "" {
		tok, err := server.ReadSecretFile(cfg.AdminTokenFile)
		if err != nil {
			return err
		}
		scfg.AdminToken = tok
	}
	srv, err := server.New(scfg, server.Deps{Predictor: eng, Watcher: eng, Ingester: ingester{consumer}, Models: models}, log, reg)
	if err != nil {
		return err
	}
	glis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen grpc: %w", err)
	}
	addrs.GRPC = glis.Addr().String()
	alis, err := net.Listen("tcp", cfg.AdminListen)
	if err != nil {
		glis.Close()
		return fmt.Errorf("listen admin: %w", err)
	}
	addrs.Admin = alis.Addr().String()
	var ready atomic.Bool
	admin := &http.Server{Handler: adminMux(reg, &ready, models, eval, cfg.Pprof), ReadHeaderTimeout: 5 * time.Second}

	// Start, each with its own context so shutdown can go in order.
	warmCtx, stopWarm := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWarm()
	consCtx, stopCons := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCons()
	srvCtx, stopSrv := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSrv()
	replayCtx, stopReplay := context.WithCancel(ctx)
	defer stopReplay()

	var warmWG, consWG, srvWG, auxWG sync.WaitGroup
	warmWG.Go(func() {
		if err := warmer.Run(warmCtx); err != nil {
			errc <- fmt.Errorf("warmer: %w", err)
		}
	})
	consWG.Go(func() {
		if err := consumer.Run(consCtx); err != nil {
			errc <- fmt.Errorf("consumer: %w", err)
		}
	})
	srvWG.Go(func() {
		if err := srv.Serve(srvCtx, glis); err != nil {
			errc <- err
		}
	})
	auxWG.Go(func() {
		if err := admin.Serve(alis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin http: %w", err)
		}
	})
	auxWG.Go(func() { watchHealth(srvCtx, log, models, rdb, dialer, brokers, consumer, srv, &ready) })
	auxWG.Go(func() { progress(srvCtx, log, eng, eval) })
	auxWG.Go(func() { feedPrecision(srvCtx, eval, models, time.Second) })
	if mem, ok := hist.(*features.Histories); ok {
		// Appends evict idle users lazily; this returns their memory when
		// traffic stops too.
		auxWG.Go(func() { _ = mem.Run(srvCtx, time.Minute) })
	}
	if cfg.Replay != ReplayNone {
		if err := startReplay(replayCtx, &auxWG, cfg, brokers, kafkaTLS, kafkaSASL, log); err != nil {
			errc <- err // shut down in order, like any component failure
		}
	}
	log.Info("prefetchd serving", "grpc", addrs.GRPC, "admin", addrs.Admin, "kafka", addrs.Kafka, "redis", addrs.Redis, "threshold", cfg.Threshold)
	if opts.Ready != nil {
		opts.Ready(addrs)
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
		log.Error("component failed, shutting down", "err", runErr)
	}
	// 1. health NOT_SERVING and drain gRPC (Serve does both when its context ends).
	ready.Store(false)
	srv.SetServing(false)
	stopSrv()
	srvWG.Wait()
	// 2. stop the replay and consuming; the consumer commits what is done.
	stopReplay()
	stopCons()
	consWG.Wait()
	// 3. flush the cache writer.
	stopWarm()
	warmWG.Wait()
	// 4. the rest; the model repository watcher stops on return.
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = admin.Shutdown(shutCtx)
	auxWG.Wait()
	log.Info("prefetchd stopped")
	return runErr
}

// openModels returns the model manager: a watched repository, or one fixed
// bundle (a folder, or the bundled model).
func openModels(ctx context.Context, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*lifecycle.Manager, error) {
	if cfg.ModelRepo != "" {
		return lifecycle.New(lifecycle.Config{
			Repo: cfg.ModelRepo, Name: cfg.ModelName,
			AutoRollback: lifecycle.AutoRollback{Enabled: cfg.AutoRollback, MinFraction: cfg.RollbackMinFraction, Window: cfg.RollbackWindow},
		}, lifecycle.LoadBundle, log, reg)
	}
	var (
		b   *model.Bundle
		err error
	)
	if cfg.Model != "" {
		b, err = model.LoadBundle(cfg.Model)
	} else {
		fsys, dir := embedded.Model()
		b, err = model.LoadBundleFS(fsys, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	return lifecycle.Static(ctx, b, lifecycle.Config{}, log, reg)
}

// waitForModel waits until the manager serves a model, so that no event is
// consumed before it can be scored.
func waitForModel(ctx context.Context, log *slog.Logger, m *lifecycle.Manager) (*lifecycle.Live, error) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	warned := time.Now()
	for {
		if l := m.Current(); l != nil {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for a valid model: %w", ctx.Err())
		case <-t.C:
			if time.Since(warned) > 10*time.Second {
				log.Warn("still waiting for a valid model version in the repository")
				warned = time.Now()
			}
		}
	}
}

func startReplay(ctx context.Context, wg *sync.WaitGroup, cfg Config, brokers []string, tc *tls.Config, mech sasl.Mechanism, log *slog.Logger) error {
	var (
		sessions []training.Session
		err      error
	)
	if cfg.Replay == ReplayEmbedded {
		sessions, err = embedded.NASASessions()
	} else {
		var f *os.File
		if f, err = os.Open(cfg.Replay); err == nil {
			sessions, err = training.ReadSPMF(f)
			f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("replay sessions: %w", err)
	}
	r, err := embedded.NewReplayer(embedded.ReplayConfig{Brokers: brokers, Topic: cfg.Topic, Rate: cfg.ReplayRate, Loop: true, TLS: tc, SASL: mech}, sessions, log)
	if err != nil {
		return err
	}
	log.Info("replaying sessions into kafka", "source", cfg.Replay, "sessions", len(sessions), "rate", cfg.ReplayRate)
	wg.Go(func() {
		// The replay is a demonstration feed: when it fails the service
		// keeps serving what else arrives.
		if err := r.Run(ctx); err != nil {
			log.Error("replay stopped", "err", err)
		}
	})
	return nil
}

// ingester is the gRPC Ingest path: the consumer's own decode, validate and
// apply, without Kafka.
type ingester struct{ c *features.Consumer }

func (i ingester) IngestJSON(ctx context.Context, event []byte) error {
	return ingestError(i.c.Apply(ctx, event))
}

// IngestJSONMany implements hint.BatchIngester: the events go through the
// engine together (shared model runs and Redis round trips).
func (i ingester) IngestJSONMany(ctx context.Context, events [][]byte, errs []error) int {
	n := i.c.ApplyMany(ctx, events, errs)
	for k := range events {
		errs[k] = ingestError(errs[k])
	}
	return n
}

// ingestError maps the consumer's rejection and duplicate to the hint API's.
func ingestError(err error) error {
	switch {
	case errors.Is(err, features.ErrRejected):
		return fmt.Errorf("%w: %w", hint.ErrInvalid, err)
	case errors.Is(err, features.ErrDuplicate):
		return fmt.Errorf("%w: %w", hint.ErrDuplicate, err)
	}
	return err
}

// adminMux serves /metrics, /healthz (the process is alive), /readyz (a
// model is loaded and Kafka and Redis answer; the body names the active model
// version), /stats (online evaluation per model version) and, when enabled,
// /debug/pprof.
func adminMux(reg *prometheus.Registry, ready *atomic.Bool, models *lifecycle.Manager, eval *prefetch.Evaluator, withPprof bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(statsView(eval.Stats()))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		version := "none"
		if l := models.Current(); l != nil {
			version = l.Version
		}
		if !ready.Load() {
			http.Error(w, "not ready model_version="+version, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready model_version="+version)
	})
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// versionStats is one model version's line of the /stats view.
type versionStats struct {
	ModelVersion string  `json:"model_version"`
	Issued       uint64  `json:"prefetches_issued"`
	Used         uint64  `json:"prefetches_used"`
	Precision    float64 `json:"precision"`
	Clicks       uint64  `json:"clicks"`
	WarmClicks   uint64  `json:"clicks_warm"`
	Coverage     float64 `json:"coverage"`
	Wasted       uint64  `json:"prefetches_wasted"`
	WastedBytes  uint64  `json:"bytes_wasted"`
}

func statsView(in []prefetch.VersionStats) []versionStats {
	out := make([]versionStats, 0, len(in))
	for _, s := range in {
		v := versionStats{ModelVersion: s.ModelVersion, Issued: s.Issued, Used: s.Used, Clicks: s.Clicks,
			WarmClicks: s.WarmClicks, Wasted: s.Wasted, WastedBytes: s.WastedBytes}
		if s.Issued > 0 {
			v.Precision = float64(s.Used) / float64(s.Issued)
		}
		if s.Clicks > 0 {
			v.Coverage = float64(s.WarmClicks) / float64(s.Clicks)
		}
		out = append(out, v)
	}
	return out
}

// feedPrecision passes the online evaluation's per-version increments to the
// model manager, which judges new versions on them (automatic rollback) and
// reports them in ModelService.Status.
func feedPrecision(ctx context.Context, eval *prefetch.Evaluator, models *lifecycle.Manager, every time.Duration) {
	type seen struct{ issued, used uint64 }
	last := map[string]seen{}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, s := range eval.Stats() {
			p := last[s.ModelVersion]
			if s.Issued > p.issued || s.Used > p.used {
				models.ObservePrecision(s.ModelVersion, s.Issued-p.issued, s.Used-p.used)
				last[s.ModelVersion] = seen{s.Issued, s.Used}
			}
		}
	}
}

// watchHealth sets gRPC health and /readyz: SERVING only while a model is
// loaded and Kafka and Redis answer.
func watchHealth(ctx context.Context, log *slog.Logger, models *lifecycle.Manager, rdb redis.UniversalClient, dialer *kafka.Dialer, brokers []string, consumer *features.Consumer, srv *server.Server, ready *atomic.Bool) {
	check := func() error {
		if models.Current() == nil {
			return hint.ErrNoModel
		}
		if err := consumer.Ready(); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if err := rdb.Ping(cctx).Err(); err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		var lastErr error
		for _, b := range brokers {
			conn, err := dialer.DialContext(cctx, "tcp", b)
			if err == nil {
				conn.Close()
				return nil
			}
			lastErr = err
		}
		return fmt.Errorf("kafka: %w", lastErr)
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	first := true
	for {
		err := check()
		ok := err == nil
		if ok != ready.Load() || first {
			if ok {
				log.Info("ready", "serving", true)
			} else {
				log.Warn("not ready", "err", err)
			}
			first = false
		}
		ready.Store(ok)
		srv.SetServing(ok)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// progress logs what flowed through the pipeline every 10 s.
func progress(ctx context.Context, log *slog.Logger, eng *engine.Engine, eval *prefetch.Evaluator) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		tot := eng.Totals()
		var issued, used, clicks, warm uint64
		for _, s := range eval.Stats() {
			issued += s.Issued
			used += s.Used
			clicks += s.Clicks
			warm += s.WarmClicks
		}
		log.Info("pipeline progress",
			"events", tot.Events, "predictions", tot.Predictions, "prefetches_queued", tot.Prefetches,
			"keys_warmed", issued, "prefetches_used", used, "clicks", clicks, "clicks_warm", warm)
		if s := eng.LastSample(); s != nil {
			hints := make([]string, len(s.Hints))
			for i, h := range s.Hints {
				hints[i] = fmt.Sprintf("%s:%.2f", h.Page, h.Probability)
			}
			log.Info("sample prediction", "user", s.UserID, "page", s.Page, "history", s.History, "model_version", s.ModelVersion, "prefetch", hints)
		}
	}
}
