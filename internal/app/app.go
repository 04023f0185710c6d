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
	"path/filepath"
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
	"github.com/prefetchd/prefetchd/transitions"
)

// Addrs are the addresses the running service bound, for tests and logs.
type Addrs struct {
	GRPC, Admin, Kafka, Redis string
}

// Options are test hooks; the zero value is what the binary uses.
type Options struct {
	// Listening, when set, receives the admin and gRPC addresses as soon as
	// both listen, before the model is loaded.
	Listening func(Addrs)
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
//
// The admin HTTP port listens first, then the gRPC port, before the model is
// loaded and before the backends answer: /healthz says the process is alive
// and /readyz (like gRPC health) says what the service still waits for.
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

	// Readiness: a list of named checks; each part below adds its own.
	ready, err := newReadiness(reg)
	if err != nil {
		return err
	}
	var parts lateParts
	ready.add("model", func(context.Context) error {
		m := parts.models.Load()
		if m == nil {
			return errors.New("loading")
		}
		return m.Waiting()
	})

	// The admin port listens from the first moment.
	alis, err := net.Listen("tcp", cfg.AdminListen)
	if err != nil {
		return fmt.Errorf("listen admin: %w", err)
	}
	addrs.Admin = alis.Addr().String()
	errc := make(chan error, 8)
	status := newStatusPage(cfg, reg, ready, &parts)
	admin := &http.Server{Handler: adminMux(reg, ready, &parts, status, cfg.Pprof), ReadHeaderTimeout: 5 * time.Second}
	var adminWG, auxWG sync.WaitGroup
	adminWG.Go(func() {
		if err := admin.Serve(alis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin http: %w", err)
		}
	})
	defer func() {
		shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = admin.Shutdown(shutCtx)
		adminWG.Wait()
	}()
	// The readiness watch drives gRPC health once the server exists; it
	// stops first at shutdown, so nothing sets SERVING again.
	var grpcSrv atomic.Pointer[server.Server]
	healthCtx, stopHealth := context.WithCancel(context.WithoutCancel(ctx))
	var healthWG sync.WaitGroup
	healthWG.Go(func() {
		ready.watch(healthCtx, log, 2*time.Second, func(ok bool) {
			if s := grpcSrv.Load(); s != nil {
				s.SetServing(ok)
			}
		})
	})
	defer func() {
		stopHealth()
		healthWG.Wait()
	}()
	srvCtx, stopSrv := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		stopSrv()
		auxWG.Wait()
	}()
	auxWG.Go(func() { status.run(srvCtx, statusEvery) })

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
	ready.add("redis", func(ctx context.Context) error {
		if err := rdb.Ping(ctx).Err(); err != nil {
			return err
		}
		// Answering PING is not taking writes (out of memory with
		// noeviction, an ACL without write rights).
		if w := parts.warmer.Load(); w != nil {
			return w.WriteErr()
		}
		return nil
	})
	if cfg.RedisAddr != "" {
		auxWG.Go(func() {
			hctx, cancel := context.WithTimeout(srvCtx, 5*time.Second)
			defer cancel()
			if hz, advise, err := redisHzAdvice(hctx, rdb, cfg.TTL); err == nil && advise {
				log.Warn("redis expires keys in cycles of up to 25 ms at this hz, which will show in click-to-warm latency with this TTL; consider hz 100 (redis-server --hz 100, or CONFIG SET hz 100)",
					"hz", hz, "ttl", cfg.TTL)
			}
		})
	}
	// The shared state of the Redis history store: in the cache's Redis
	// unless an instance of its own is named.
	srdb := rdb
	if cfg.StateRedisAddr != "" {
		if srdb, err = redisClient(cfg, cfg.StateRedisAddr); err != nil {
			return err
		}
		defer srdb.Close()
		ready.add("state-redis", func(ctx context.Context) error { return srdb.Ping(ctx).Err() })
	}
	if cfg.HistoryStore == features.BackendRedis && (cfg.RedisAddr != "" || cfg.StateRedisAddr != "") {
		auxWG.Go(func() {
			hctx, cancel := context.WithTimeout(srvCtx, 5*time.Second)
			defer cancel()
			if policy, evicts, err := redisEvicts(hctx, srdb); err == nil && evicts {
				advice := "give it maxmemory-policy noeviction, or give the state a redis of its own (--state-redis-addr)"
				if cfg.StateRedisAddr != "" {
					advice = "give it maxmemory-policy noeviction (or no maxmemory)"
				}
				log.Warn("the redis holding histories and partition marks may evict them under memory pressure; "+advice, "policy", policy)
			}
		})
	}
	kafkaTLS, kafkaSASL, err := kafkaSecurity(cfg)
	if err != nil {
		return err
	}
	dialer := kafkaDialer(kafkaTLS, kafkaSASL)
	ready.add("kafka", func(ctx context.Context) error { return kafkaReady(ctx, dialer, brokers, checkTimeout) })

	// The model.
	canon, err := canonicalizer(cfg)
	if err != nil {
		return err
	}
	models, err := openModels(ctx, cfg, canon, log, reg)
	if err != nil {
		return err
	}
	parts.models.Store(models)
	ready.poke()
	var wg sync.WaitGroup
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

	// gRPC listens before the model is live: until the pipeline is built,
	// Predict and Ingest answer UNAVAILABLE and ModelService works.
	scfg := server.Config{
		TLSCertFile: cfg.TLSCert, TLSKeyFile: cfg.TLSKey, TLSClientCAFile: cfg.TLSClientCA,
		RequireClientCert: cfg.TLSClientCA != "", AllowedClientCNs: cfg.AdminClientCNs,
		MaxWatchers: cfg.MaxWatchers,
	}
	if cfg.AdminTokenFile != "" {
		tok, err := server.ReadSecretFile(cfg.AdminTokenFile)
		if err != nil {
			return err
		}
		scfg.AdminToken = tok
	}
	pipe := &pending{}
	srv, err := server.New(scfg, server.Deps{Predictor: pipe, Watcher: pipe, Ingester: pipe, Models: models}, log, reg)
	if err != nil {
		return err
	}
	srv.SetServing(false)
	glis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen grpc: %w", err)
	}
	addrs.GRPC = glis.Addr().String()
	var srvWG sync.WaitGroup
	srvWG.Go(func() {
		if err := srv.Serve(srvCtx, glis); err != nil {
			errc <- err
		}
	})
	defer func() {
		stopHealth()
		healthWG.Wait()
		srv.SetServing(false)
		stopSrv()
		srvWG.Wait()
	}()
	grpcSrv.Store(srv)
	ready.poke()
	log.Info("listening; waiting for the model", "grpc", addrs.GRPC, "admin", addrs.Admin)
	if opts.Listening != nil {
		opts.Listening(addrs)
	}

	live, err := waitForModel(ctx, log, models, errc)
	if err != nil {
		return err
	}
	if live == nil {
		log.Info("prefetchd stopped before a model was loaded")
		return nil
	}
	log.Info("model loaded", "name", live.Manifest.Name, "version", live.Version, "vocab", live.Vocab.Len(), "max_seq_len", live.Manifest.MaxSeqLen)

	// The pipeline.
	hist, err := features.NewStore(features.StoreConfig{
		Backend: cfg.HistoryStore,
		History: features.HistoryConfig{MaxLen: live.Manifest.MaxSeqLen, MaxUsers: cfg.HistoryMaxUsers, SessionGap: cfg.SessionGap, IdleTTL: cfg.HistoryIdleTTL},
	}, srdb, reg)
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
		GlobalRate: cfg.GlobalRate, PerUserRate: cfg.PerUserRate, BudgetKeys: cfg.BudgetKeys, BudgetBytes: cfg.BudgetBytes,
		OriginTimeout: cfg.OriginTimeout, MaxBodyBytes: cfg.OriginMaxBody, OriginConcurrency: cfg.OriginConcurrency,
		QueueSize: cfg.WarmQueue, Workers: cfg.WarmWorkers, PipelineSize: cfg.WarmPipeline, Block: cfg.WarmBackpressure,
		ShedFrom: cfg.WarmShedFrom, ShedFromSet: true,
	}, rdb, log, reg)
	if err != nil {
		return err
	}
	warmer.SetObserver(eval)
	parts.warmer.Store(warmer)
	models.OnSwap(func(_, l *lifecycle.Live) {
		if l != nil {
			eval.SetModelVersion(l.Version)
		}
	})
	eval.SetModelVersion(live.Version)
	parts.eval.Store(eval)
	online, err := onlineStats(cfg, srdb, log, reg)
	if err != nil {
		return err
	}
	eng, err := engine.New(engine.Config{}, engine.Deps{
		Models: models, Histories: hist, Canon: canon, Policy: policy, Warmer: warmer, Evaluator: eval,
		Transitions: online,
	}, log, reg)
	if err != nil {
		return err
	}
	// Partition marks live where the histories do: a restart with shared
	// histories must still tell redeliveries from offsets that went back.
	var marks features.Marks = features.NewMemoryMarks()
	if cfg.HistoryStore == features.BackendRedis {
		marks = features.NewRedisMarks(srdb, features.DefaultKeyPrefix, cfg.Group, cfg.Topic)
	}
	parts.eng.Store(eng)
	hub := newAnyHub(eng.PredictUncounted, eng.CountWatchDropped, anyEvery)
	consumer, err := features.NewConsumer(features.ConsumerConfig{
		Brokers: brokers, Topic: cfg.Topic, GroupID: cfg.Group, DeadLetterTopic: cfg.DeadLetterTopic, Dialer: dialer,
		Workers: cfg.Workers, BatchSize: cfg.IngestBatch, EventIDCache: cfg.EventIDCache, CommitInterval: cfg.CommitInterval, CommitBatch: cfg.CommitBatch,
		SessionTimeout: cfg.KafkaSessionTimeout, HeartbeatInterval: cfg.KafkaHeartbeatInterval,
		Decoder: features.DecoderConfig{MaxSkew: cfg.MaxSkew}, Marks: marks,
	}, clickTap{eng, hub}, log, reg)
	if err != nil {
		return err
	}
	// Closed in step 2 of the shutdown below (bounded); nothing returns
	// between here and there.

	// Start, each with its own context so shutdown can go in order.
	warmCtx, stopWarm := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWarm()
	consCtx, stopCons := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCons()
	replayCtx, stopReplay := context.WithCancel(ctx)
	defer stopReplay()

	var warmWG, consWG sync.WaitGroup
	warmWG.Go(func() {
		if err := warmer.Run(warmCtx); err != nil {
			errc <- fmt.Errorf("warmer: %w", err)
		}
	})
	// Settles the prefetches that expire while no click comes (wasted).
	warmWG.Go(func() { _ = eval.Run(warmCtx) })
	if online != nil {
		// Sends the shared statistics' buffer off the clicks' path; stops
		// after the consumer, with a last send.
		warmWG.Go(func() { _ = online.Run(warmCtx) })
	}
	consWG.Go(func() {
		if err := consumer.Run(consCtx); err != nil {
			errc <- fmt.Errorf("consumer: %w", err)
		}
	})
	ready.add("ingest", func(context.Context) error { return consumer.Ready() })
	if cfg.OverloadLag > 0 {
		ready.add("overloaded", func(context.Context) error { return overloaded(consumer.LagSeconds(), cfg.OverloadLag) })
	}
	pipe.set(eng, ingester{consumer}, hub)
	ready.poke()
	auxWG.Go(func() { hub.run(srvCtx) })
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
	// 1. health NOT_SERVING (the readiness watch stopped first) and drain
	// gRPC (Serve does both when its context ends).
	stopHealth()
	healthWG.Wait()
	srv.SetServing(false)
	stopSrv()
	srvWG.Wait()
	// 2. stop the replay and consuming; the consumer commits what is done.
	stopReplay()
	stopCons()
	consWG.Wait()
	// The reader's Close waits for its consumer-group goroutine, which an
	// unresponsive broker holds for many seconds: shutdown does not wait
	// for it longer than consumerCloseTimeout (offsets are committed by
	// then; the process exits anyway).
	closeWithin(log, "kafka consumer", consumerCloseTimeout, consumer.Close)
	// 3. flush the cache writer.
	stopWarm()
	warmWG.Wait()
	// 4. the rest (deferred): the admin port, the model repository watcher.
	auxWG.Wait()
	log.Info("prefetchd stopped")
	return runErr
}

// lateParts are the parts the admin port shows that exist only once the
// model is open or the pipeline built; nil until then.
type lateParts struct {
	models atomic.Pointer[lifecycle.Manager]
	eval   atomic.Pointer[prefetch.Evaluator]
	warmer atomic.Pointer[prefetch.Warmer]
	eng    atomic.Pointer[engine.Engine]
}

// pending is the gRPC server's engine and ingester before the pipeline is
// built: Predict and Ingest return hint.ErrNoModel (UNAVAILABLE) and
// WatchHints ends at once; after set it passes everything through, and
// sends WatchHints for AnyUser to the hub.
type pending struct {
	eng atomic.Pointer[engine.Engine]
	ing atomic.Pointer[ingester]
	hub atomic.Pointer[anyHub]
}

func (p *pending) set(eng *engine.Engine, ing ingester, hub *anyHub) {
	p.ing.Store(&ing)
	p.hub.Store(hub)
	p.eng.Store(eng)
}

// Predict implements hint.Predictor.
func (p *pending) Predict(ctx context.Context, q hint.Query) (hint.Result, error) {
	if e := p.eng.Load(); e != nil {
		return e.Predict(ctx, q)
	}
	return hint.Result{}, hint.ErrNoModel
}

// Subscribe implements hint.Watcher; before the pipeline the channel is
// closed, which ends the stream.
func (p *pending) Subscribe(users []string, buffer int) (<-chan hint.Update, func()) {
	if e := p.eng.Load(); e != nil {
		if watchesAny(users) {
			return p.hub.Load().subscribe(buffer)
		}
		return e.Subscribe(users, buffer)
	}
	ch := make(chan hint.Update)
	close(ch)
	return ch, func() {}
}

// WarmNow implements hint.Presence; all cold before the pipeline.
func (p *pending) WarmNow(ctx context.Context, user string, hints []hint.Hint) []bool {
	if e := p.eng.Load(); e != nil {
		return e.WarmNow(ctx, user, hints)
	}
	return make([]bool, len(hints))
}

// IngestJSON implements hint.Ingester.
func (p *pending) IngestJSON(ctx context.Context, event []byte) error {
	if i := p.ing.Load(); i != nil {
		return i.IngestJSON(ctx, event)
	}
	return hint.ErrNoModel
}

// IngestJSONMany implements hint.BatchIngester.
func (p *pending) IngestJSONMany(ctx context.Context, events [][]byte, errs []error) int {
	if i := p.ing.Load(); i != nil {
		return i.IngestJSONMany(ctx, events, errs)
	}
	if len(events) == 0 {
		return 0
	}
	errs[0] = hint.ErrNoModel
	return 0
}

// openModels returns the model manager: a watched repository, or one fixed
// bundle (a folder, or the bundled model).
func openModels(ctx context.Context, cfg Config, canon *features.Canonicalizer, log *slog.Logger, reg prometheus.Registerer) (*lifecycle.Manager, error) {
	check := vocabCheck(canon, log)
	if cfg.ModelRepo != "" {
		return lifecycle.New(lifecycle.Config{
			Repo: cfg.ModelRepo, Name: cfg.ModelName,
			AutoRollback: lifecycle.AutoRollback{Enabled: cfg.AutoRollback, MinFraction: cfg.RollbackMinFraction, Window: cfg.RollbackWindow},
			CheckVocab:   check,
		}, lifecycle.LoadBundle, log, reg)
	}
	var (
		b   *model.Bundle
		err error
	)
	if cfg.Model != "" {
		b, err = loadModelFolder(cfg.Model)
	} else {
		fsys, dir := embedded.Model()
		if b, err = model.LoadBundleFS(fsys, dir); err != nil {
			err = fmt.Errorf("load model: %w", err)
		}
	}
	if err != nil {
		return nil, err
	}
	return lifecycle.Static(ctx, b, lifecycle.Config{CheckVocab: check}, log, reg)
}

// vocabCheck vets a model's vocabulary against the canonicalizer the
// service looks pages up with: a key that is not in canonical form can
// never be looked up. A vocabulary most of whose keys are not (built from
// raw URLs, or under another canonicalizer config) would read every click
// as unknown and is refused; a few such keys are logged.
func vocabCheck(canon *features.Canonicalizer, log *slog.Logger) func(*model.Vocab) error {
	return func(v *model.Vocab) error {
		var n, bad int
		var key, as string
		for i := int64(model.UnknownIndex + 1); i < int64(v.Len()); i++ {
			k := v.Page(i)
			n++
			if c := canon.Canonical(k); c != k {
				if bad == 0 {
					key, as = k, c
				}
				bad++
			}
		}
		switch {
		case bad == 0:
			return nil
		case 2*bad > n:
			return fmt.Errorf("%d of the vocabulary's %d pages are not canonical keys (%q is looked up as %q), so clicks on them would read as unknown: build vocab.txt with the service's canonicalizer (prefetch-train, with --canonical-config when the service has one)", bad, n, key, as)
		}
		log.Warn("vocabulary keys that are not canonical can never be looked up", "keys", bad, "of", n, "example", key, "looked_up_as", as)
		return nil
	}
}

// loadModelFolder loads --model, naming its absolute path in errors and
// saying what to give instead of a file.
func loadModelFolder(dir string) (*model.Bundle, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("load model: --model %s is a file; give the bundle folder that holds %s and %s (and optionally %s)",
			abs, model.ModelFile, model.VocabFile, model.ManifestFile)
	}
	b, err := model.LoadBundle(abs)
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	return b, nil
}

// waitForModel waits until the manager serves a model, so that no event is
// consumed before it can be scored. It returns nil, nil when ctx ends first
// (a clean stop) and the error of a component that failed meanwhile.
func waitForModel(ctx context.Context, log *slog.Logger, m *lifecycle.Manager, errc <-chan error) (*lifecycle.Live, error) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	warned := time.Now()
	for {
		if l := m.Current(); l != nil {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case err := <-errc:
			return nil, err
		case <-t.C:
			if time.Since(warned) > 30*time.Second {
				log.Warn("still waiting for a valid model version", "why", m.Waiting())
				warned = time.Now()
			}
		}
	}
}

// kafkaReady is the "kafka" readiness check. It asks every broker at once
// for its API versions, through dialer (so with its TLS and SASL settings),
// and returns nil as soon as one answers. A TCP connect alone would pass for
// a broker that accepts connections but does not serve them (stopped with
// SIGSTOP, overloaded): the kernel still completes the handshake. When no
// broker answers within timeout, or ctx ends first, the error says so and
// lists each broker's failure; when every broker fails sooner (connection
// refused, authentication failed) it begins "unreachable". kafkaReady
// returns only once every attempt has ended and its connection is closed.
func kafkaReady(ctx context.Context, dialer *kafka.Dialer, brokers []string, timeout time.Duration) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errc := make(chan error, len(brokers))
	for _, b := range brokers {
		wg.Go(func() { errc <- askVersions(ctx, dialer, b) })
	}
	var (
		errs     []error
		noAnswer bool
	)
	for range brokers {
		err := <-errc
		if err == nil {
			return nil
		}
		errs = append(errs, err)
		noAnswer = noAnswer || errors.Is(err, errNoAnswer)
	}
	if noAnswer {
		if dialer.TLS != nil {
			// A plaintext listener says nothing to a TLS client hello.
			return fmt.Errorf("no broker answered within %s over TLS (a listener without TLS stays silent to it): %w", timeout, errors.Join(errs...))
		}
		return fmt.Errorf("no broker answered within %s: %w", timeout, errors.Join(errs...))
	}
	return fmt.Errorf("unreachable: %w", errors.Join(errs...))
}

// errNoAnswer is askVersions' error for a broker that did not answer
// before the context ended.
var errNoAnswer = errors.New("no answer")

// askVersions connects to broker with a copy of dialer and sends it an
// ApiVersions request. The connection is closed when ctx ends, which also
// ends a TLS or SASL handshake that kafka-go would otherwise wait on
// without a deadline. A broker silent until then gives an error wrapping
// errNoAnswer.
func askVersions(ctx context.Context, dialer *kafka.Dialer, broker string) error {
	d := *dialer
	dial := d.DialFunc
	if dial == nil {
		nd := &net.Dialer{LocalAddr: d.LocalAddr, FallbackDelay: d.FallbackDelay, KeepAlive: d.KeepAlive}
		dial = nd.DialContext
	}
	d.DialFunc = func(dctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(dctx, network, addr)
		if err == nil {
			context.AfterFunc(ctx, func() { c.Close() })
		}
		return c, err
	}
	conn, err := d.DialContext(ctx, "tcp", broker)
	if err != nil {
		if ctx.Err() != nil || isTimeout(err) {
			return fmt.Errorf("%s: %w", broker, errNoAnswer)
		}
		return err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(deadline); err != nil {
			return fmt.Errorf("%s: %w", broker, err)
		}
	}
	if _, err := conn.ApiVersions(); err != nil {
		// The connection's deadline and ctx's end at the same instant:
		// whichever fires first, the broker did not answer in time.
		if ctx.Err() != nil || isTimeout(err) {
			return fmt.Errorf("%s: %w", broker, errNoAnswer)
		}
		return fmt.Errorf("%s: api versions: %w", broker, err)
	}
	return nil
}

// isTimeout reports whether err is a network deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
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

// adminMux serves / (the status page), /metrics, /healthz (the process is
// alive), /readyz (every readiness check passes; the body names the active
// model version, or each failing check and why), /stats (online evaluation
// per model version) and, when enabled, /debug/pprof.
func adminMux(reg *prometheus.Registry, ready *readiness, parts *lateParts, status http.Handler, withPprof bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", status)
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		eval := parts.eval.Load()
		if eval == nil {
			http.Error(w, "no statistics yet: waiting for the model", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(statsView(eval.Stats()))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ready.serve(w, func() string {
			if m := parts.models.Load(); m != nil {
				if l := m.Current(); l != nil {
					return l.Version
				}
			}
			return "none"
		})
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
	type seen struct{ issued, used, wasted uint64 }
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
			if s.Issued > p.issued || s.Used > p.used || s.Wasted > p.wasted {
				models.ObservePrecision(s.ModelVersion, s.Issued-p.issued, s.Used-p.used, s.Wasted-p.wasted)
				last[s.ModelVersion] = seen{s.Issued, s.Used, s.Wasted}
			}
		}
	}
}

// progress logs what flowed through the pipeline 3 s after the start, then
// every 10 s.
func progress(ctx context.Context, log *slog.Logger, eng *engine.Engine, eval *prefetch.Evaluator) {
	t := time.NewTimer(3 * time.Second) // the first report early, so a start shows life
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			t.Reset(10 * time.Second)
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

// onlineStats builds the online transition statistics where the histories
// live, or none when --online is off.
func onlineStats(cfg Config, rdb redis.UniversalClient, log *slog.Logger, reg prometheus.Registerer) (*transitions.Stats, error) {
	if !cfg.Online {
		return nil, nil
	}
	tcfg := transitions.Config{
		HalfLife: cfg.OnlineHalfLife, Evidence: cfg.OnlineEvidence, EvidenceSet: true,
		MaxPages: cfg.OnlineMaxPages, MaxNext: cfg.OnlineMaxNext,
	}
	if cfg.HistoryStore == features.BackendRedis {
		st, err := transitions.NewRedis(tcfg, rdb, reg)
		if err != nil {
			return nil, err
		}
		// Off the click path: writes batched, reads cached briefly.
		return transitions.Share(st, transitions.SharedConfig{FlushInterval: cfg.OnlineFlushInterval, CacheTTL: cfg.OnlineCacheTTL, Log: log}), nil
	}
	return transitions.NewMemory(tcfg, reg)
}

// consumerCloseTimeout bounds the wait for the Kafka consumer to close at
// shutdown.
const consumerCloseTimeout = 3 * time.Second

// closeWithin runs closeFn and waits for it at most d; past d it logs and
// returns, leaving closeFn to finish (or not) on its own.
func closeWithin(log *slog.Logger, what string, d time.Duration, closeFn func() error) {
	done := make(chan error, 1)
	go func() { done <- closeFn() }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			log.Warn("close "+what, "err", err)
		}
	case <-t.C:
		log.Warn(what+" did not close in time; not waiting for it", "waited", d)
	}
}
