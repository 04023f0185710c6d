// Package server is prefetchd's gRPC front door: it serves HintService
// (Predict, WatchHints, Ingest, Ping) and ModelService (Status, Activate,
// Rollback) from proto/prefetch/v1 over the engine's interfaces in
// internal/hint, with the standard health service and server reflection.
//
// Requests are validated here (INVALID_ARGUMENT names the offending field),
// engine errors are mapped to status codes here and nowhere else, every call
// is timed and counted (prefetchd_grpc_* metrics), handler panics become
// INTERNAL, and ModelService requires a bearer token or an allowed mutual-TLS
// client certificate.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/prefetchd/prefetchd/internal/hint"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// healthServices returns the names reported by the health service;
// SetServing drives them all.
func healthServices() []string {
	return []string{
		"",
		prefetchv1.HintService_ServiceDesc.ServiceName,
		prefetchv1.ModelService_ServiceDesc.ServiceName,
	}
}

// Deps are the engine interfaces the server calls. Predictor is required; a
// nil Watcher, Ingester or Models makes the matching RPCs answer
// UNIMPLEMENTED.
type Deps struct {
	Predictor hint.Predictor
	Watcher   hint.Watcher
	Ingester  hint.Ingester
	Models    hint.Models
}

// Server is the gRPC server. Build it with New, run it with Serve, and drive
// its health with SetServing.
type Server struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	metrics *metrics

	grpc   *grpc.Server
	health *health.Server
	// marks are received messages the codec could not decode (utf8.go).
	marks marks

	methods       map[string]*methodMetrics // read-only after New
	unknownMethod *methodMetrics

	tokenHash  [sha256.Size]byte
	hasToken   bool
	allowedCNs map[string]struct{}

	started   atomic.Bool
	drain     chan struct{} // closed when shutdown starts; ends WatchHints streams
	drainOnce sync.Once

	// running counts the calls in their handlers, sending the WatchHints
	// streams inside Send: at shutdown, when every call left is a stream
	// whose caller stopped reading (its Send waits for flow control), or
	// none is left but a stream's data still waits for its caller, the
	// drain cuts them after stuckSendGrace instead of waiting its timeout.
	running atomic.Int64
	// watchers counts the WatchHints streams open (Config.MaxWatchers).
	watchers atomic.Int64
	sending  atomic.Int64
}

// stuckSendGrace is how long, at shutdown, every call still running must
// have been a WatchHints send waiting for its caller before they are cut.
const stuckSendGrace = time.Second

// New validates cfg, loads the TLS material it names, and builds a server
// whose health is NOT_SERVING until SetServing(true). logger and reg may be
// nil (no logs, unregistered metrics). Errors come from Config.Validate, from
// reading certificates, or from registering metrics twice on reg.
func New(cfg Config, deps Deps, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Predictor == nil {
		return nil, errors.New("server: Deps.Predictor is required")
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	var creds grpc.ServerOption
	if cfg.TLSCertFile != "" {
		tc, err := cfg.serverTLS(logger, func(result string) { m.certReloads.WithLabelValues(result).Inc() })
		if err != nil {
			return nil, err
		}
		creds = grpc.Creds(credentials.NewTLS(tc))
	}
	s := &Server{
		cfg:        cfg,
		deps:       deps,
		log:        logger,
		metrics:    m,
		allowedCNs: make(map[string]struct{}, len(cfg.AllowedClientCNs)),
		drain:      make(chan struct{}),
	}
	if cfg.AdminToken != "" {
		s.tokenHash = sha256.Sum256([]byte(cfg.AdminToken))
		s.hasToken = true
	}
	for _, cn := range cfg.AllowedClientCNs {
		s.allowedCNs[cn] = struct{}{}
	}
	if !s.hasToken && len(s.allowedCNs) == 0 {
		logger.Warn("ModelService calls will all be refused: no admin token and no admin client certificate names are configured")
	}

	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(newUTF8Codec(&s.marks)),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(MaxStreamsPerConn),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
		// Calls to a method or service not registered go through the
		// stream interceptor too, so they are counted (method "unknown").
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			method, _ := grpc.MethodFromServerStream(stream)
			return status.Errorf(codes.Unimplemented, "unknown method %s", method)
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
	}
	if creds != nil {
		opts = append(opts, creds)
	}
	s.grpc = grpc.NewServer(opts...)
	s.health = health.NewServer()
	for _, name := range healthServices() {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	healthpb.RegisterHealthServer(s.grpc, healthService{Server: s.health, drain: s.drain})
	prefetchv1.RegisterHintServiceServer(s.grpc, &hintService{s: s})
	prefetchv1.RegisterModelServiceServer(s.grpc, &modelService{s: s})
	reflection.Register(s.grpc)

	if s.hasToken && cfg.TLSCertFile == "" {
		logger.Warn("admin bearer token accepted over plaintext gRPC; use TLS beyond loopback")
	}
	s.methods = make(map[string]*methodMetrics)
	for svc, info := range s.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			full := "/" + svc + "/" + m.Name
			s.methods[full] = s.metrics.forMethod(full)
		}
	}
	s.unknownMethod = s.metrics.forMethod("unknown")
	return s, nil
}

// serverTLS builds the TLS configuration: the server key pair (reloaded
// when its files change, see keyPair) and, with a client CA, verification
// of client certificates (required or optional).
func (c Config) serverTLS(log *slog.Logger, reloads func(string)) (*tls.Config, error) {
	kp, err := newKeyPair(c.TLSCertFile, c.TLSKeyFile, log, reloads)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{
		GetCertificate: kp.get,
		MinVersion:     tls.VersionTLS12,
	}
	if c.TLSClientCAFile != "" {
		pem, err := os.ReadFile(c.TLSClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("server: read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("server: client CA %s holds no PEM certificate", c.TLSClientCAFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.VerifyClientCertIfGiven
		if c.RequireClientCert {
			tc.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return tc, nil
}

// SetServing sets the health of every service ("", prefetch.v1.HintService,
// prefetch.v1.ModelService) to SERVING or NOT_SERVING. The service calls it
// from its readiness (model loaded, Kafka and Redis answering). After
// shutdown has started it has no effect.
func (s *Server) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, name := range healthServices() {
		s.health.SetServingStatus(name, st)
	}
}

// Serve accepts connections on lis until ctx ends, then shuts down in order:
// health NOT_SERVING, WatchHints streams ended with UNAVAILABLE (health
// Watch streams too, once NOT_SERVING has reached them), in-flight
// calls drained for up to Config.ShutdownTimeout, then the rest cut; they
// are cut sooner when all that is left for stuckSendGrace are WatchHints
// sends waiting for callers that stopped reading. It
// returns nil after a shutdown caused by ctx, or the error that stopped
// serving early. Serve may be called once; it closes lis.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("server: Serve called twice")
	}
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(lis) }()
	select {
	case err := <-errc:
		s.stop()
		return fmt.Errorf("server: serve grpc: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("grpc server shutting down", "timeout", s.cfg.ShutdownTimeout)
	s.health.Shutdown()
	s.drainOnce.Do(func() { close(s.drain) })
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(s.cfg.ShutdownTimeout)
	defer t.Stop()
	tick := time.NewTicker(stuckSendGrace / 20)
	defer tick.Stop()
	var stuckSince time.Time
wait:
	for {
		select {
		case <-done:
			break wait
		case <-t.C:
			s.log.Warn("grpc graceful stop timed out, cutting remaining calls")
			s.grpc.Stop()
			<-done
			break wait
		case now := <-tick.C:
			// Cut after stuckSendGrace of: every call left a send waiting
			// for its caller, or no call left while the drain still waits
			// (a stream whose handler returned, but whose data and status
			// a caller that stopped reading never takes).
			if s.sending.Load() < s.running.Load() {
				stuckSince = time.Time{}
				continue
			}
			if stuckSince.IsZero() {
				stuckSince = now
			} else if now.Sub(stuckSince) >= stuckSendGrace {
				s.log.Warn("cutting WatchHints streams whose callers stopped reading", "streams", s.sending.Load())
				s.grpc.Stop()
				<-done
				break wait
			}
		}
	}
	<-errc
	s.log.Info("grpc server stopped")
	return nil
}

// stop ends everything at once after Serve failed.
func (s *Server) stop() {
	s.health.Shutdown()
	s.drainOnce.Do(func() { close(s.drain) })
	s.grpc.Stop()
}
