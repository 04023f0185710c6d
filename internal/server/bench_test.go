package server

import (
	"context"
	"testing"

	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// BenchmarkRPC measures Predict (fake engine, five hints) beside the empty
// Ping through the full stack over a 127.0.0.1 connection, serially and in
// parallel, in the same run.
func BenchmarkRPC(b *testing.B) {
	pred := &servertest.Predictor{Quiet: true, Result: hint.Result{ModelVersion: "v1", Hints: []hint.Hint{
		{Page: "/a/b/c.html", Probability: 0.4, Warm: true}, {Page: "/d/", Probability: 0.2},
		{Page: "/e.gif", Probability: 0.1}, {Page: "/f/g.html", Probability: 0.05}, {Page: "/h", Probability: 0.04},
	}}}
	h := start(b, Config{}, Deps{Predictor: pred})
	req := &prefetchv1.PredictRequest{UserId: "user-1"}
	calls := map[string]func(ctx context.Context) error{
		"Ping": func(ctx context.Context) error {
			_, err := h.hints.Ping(ctx, &prefetchv1.PingRequest{})
			return err
		},
		"Predict": func(ctx context.Context) error {
			_, err := h.hints.Predict(ctx, req)
			return err
		},
	}
	for _, name := range []string{"Ping", "Predict"} {
		call := calls[name]
		b.Run(name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			ctx := context.Background()
			for b.Loop() {
				if err := call(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(32) // 64 callers on 2 CPUs
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					if err := call(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
