package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// adminPrefix is the method prefix of the service that needs authorization.
const adminPrefix = "/prefetch.v1.ModelService/"

// methodMetrics returns the metrics of a full method name; the map is built
// once after all services are registered and only read afterwards.
func (s *Server) metricsFor(fullMethod string) *methodMetrics {
	if mm, ok := s.methods[fullMethod]; ok {
		return mm
	}
	return s.unknownMethod
}

// unaryInterceptor runs around every unary call: metrics (outermost, so it
// sees the final code), panic recovery, ModelService authorization, and the
// default deadline.
func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	mm := s.metricsFor(info.FullMethod)
	s.metrics.inFlight.Inc()
	s.running.Add(1)
	defer func() {
		if r := recover(); r != nil {
			err = s.recovered(info.FullMethod, r)
			resp = nil
		}
		s.metrics.inFlight.Dec()
		s.running.Add(-1)
		mm.observe(time.Since(start), status.Code(err))
	}()
	bad := s.takeMark(req) // taken in any case: the mark must not outlive the call
	if strings.HasPrefix(info.FullMethod, adminPrefix) {
		if err := s.authorize(ctx, info.FullMethod); err != nil {
			return nil, err
		}
	}
	if bad != nil {
		return nil, bad
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.DefaultDeadline)
		defer cancel()
	}
	return handler(ctx, req)
}

// streamInterceptor is unaryInterceptor for streams, without the default
// deadline: streams live as long as the caller wants.
func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	mm := s.metricsFor(info.FullMethod)
	s.metrics.inFlight.Inc()
	s.running.Add(1)
	defer func() {
		if r := recover(); r != nil {
			err = s.recovered(info.FullMethod, r)
		}
		s.metrics.inFlight.Dec()
		s.running.Add(-1)
		mm.observe(time.Since(start), status.Code(err))
	}()
	if strings.HasPrefix(info.FullMethod, adminPrefix) {
		if err := s.authorize(ss.Context(), info.FullMethod); err != nil {
			return err
		}
	}
	return handler(srv, markedStream{ss, s})
}

// recovered logs a handler panic with its stack and turns it into INTERNAL.
func (s *Server) recovered(method string, r any) error {
	s.metrics.panics.Inc()
	s.log.Error("grpc handler panicked", "method", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}

// authorize admits a ModelService call that carries the admin bearer token or
// comes over mutual TLS from an allowed client common name. It returns
// UNAUTHENTICATED for missing or wrong credentials and PERMISSION_DENIED for
// a verified client certificate that is not allowed (and no valid token).
// Neither the token presented nor the configured one is ever logged.
func (s *Server) authorize(ctx context.Context, method string) error {
	cn, hasCert := clientCN(ctx)
	if hasCert {
		if _, ok := s.allowedCNs[cn]; ok {
			return nil
		}
	}
	tok, present, malformed := bearerToken(ctx)
	switch {
	case present && s.tokenMatches(tok):
		return nil
	case malformed:
		return s.refuse(ctx, method, codes.Unauthenticated, "malformed authorization metadata: want \"Bearer <token>\"")
	case present && !s.hasToken:
		return s.refuse(ctx, method, codes.Unauthenticated, "this server accepts no bearer token: it was started without an admin token (--admin-token-file)")
	case present:
		return s.refuse(ctx, method, codes.Unauthenticated, "invalid bearer token")
	case hasCert:
		return s.refuse(ctx, method, codes.PermissionDenied, fmt.Sprintf("client certificate %q may not administer models", cn))
	default:
		return s.refuse(ctx, method, codes.Unauthenticated, "admin credentials required: bearer token or client certificate")
	}
}

// refuse counts and logs a refused admin call and returns its status. A
// method the server does not have (any name a caller makes up under the
// admin service) is counted as "unknown" and logged cut to maxLoggedMethod
// bytes, so that callers cannot grow /metrics or the log at will.
func (s *Server) refuse(ctx context.Context, method string, code codes.Code, msg string) error {
	label := "unknown"
	if _, ok := s.methods[method]; ok {
		label = method
	}
	s.metrics.authFailures.WithLabelValues(label, code.String()).Inc()
	attrs := []any{"method", cutMethod(method), "code", code.String(), "reason", msg}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, "peer", p.Addr.String())
	}
	s.log.Warn("admin call refused", attrs...)
	return status.Error(code, msg)
}

// maxLoggedMethod bounds the method names written to the log.
const maxLoggedMethod = 128

// cutMethod is name cut to maxLoggedMethod bytes (on a rune boundary),
// marked with "..." when cut.
func cutMethod(name string) string {
	if len(name) <= maxLoggedMethod {
		return name
	}
	cut := maxLoggedMethod
	for cut > 0 && !utf8.RuneStart(name[cut]) {
		cut--
	}
	return name[:cut] + "..."
}

// tokenMatches compares tok with the admin token in constant time (over
// SHA-256 digests, so the length does not leak either).
func (s *Server) tokenMatches(tok string) bool {
	if !s.hasToken {
		return false
	}
	got := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) == 1
}

// bearerToken extracts the token of an "authorization: Bearer <token>"
// metadata entry. present is false when there is no such entry; malformed is
// true when there is one but not of that form.
func bearerToken(ctx context.Context) (tok string, present, malformed bool) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return "", false, false
	}
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return "", false, false
	}
	if len(vals) > 1 {
		return "", false, true
	}
	scheme, rest, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", false, true
	}
	rest = strings.TrimSpace(rest)
	if rest == "" {
		return "", false, true
	}
	return rest, true, false
}

// clientCN returns the common name of the caller's verified TLS client
// certificate, if any.
func clientCN(ctx context.Context) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return "", false
	}
	return ti.State.VerifiedChains[0][0].Subject.CommonName, true
}

// identity describes the caller of an admin call for the audit log.
func identity(ctx context.Context) slog.Attr {
	if cn, ok := clientCN(ctx); ok {
		return slog.String("client_cn", cn)
	}
	if _, present, _ := bearerToken(ctx); present {
		return slog.String("client", "bearer token")
	}
	return slog.String("client", "unknown")
}
