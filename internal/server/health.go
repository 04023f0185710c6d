package server

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// healthService is grpc-go's health service whose Watch streams end at
// shutdown, after NOT_SERVING has reached them: grpc-go's own keep them
// open, which holds a graceful stop for its whole timeout.
type healthService struct {
	*health.Server
	drain <-chan struct{}
}

// watchNotice is how long a Watch stream has, once shutdown starts, to
// send the NOT_SERVING that health.Server.Shutdown queued for it.
const watchNotice = 250 * time.Millisecond

// Watch implements healthpb.HealthServer.
func (h healthService) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- h.Server.Watch(req, watchStream{stream, ctx}) }()
	select {
	case err := <-errc:
		return err
	case <-h.drain:
	}
	select {
	case err := <-errc:
		return err
	case <-time.After(watchNotice):
	}
	cancel()
	<-errc
	return status.Error(codes.Unavailable, "server shutting down")
}

// watchStream is a Watch stream whose context ends when Watch cancels it.
type watchStream struct {
	healthpb.Health_WatchServer
	ctx context.Context
}

func (w watchStream) Context() context.Context { return w.ctx }
