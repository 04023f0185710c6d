package server_test

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/server"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// A server over an engine (here a fake), served on a loopback port until its
// context ends, and asked for hints by the generated client.
func ExampleNew() {
	engine := &servertest.Predictor{Result: hint.Result{
		ModelVersion: "v1",
		Hints:        []hint.Hint{{Page: "/shuttle/countdown/", Probability: 0.42, Warm: true}},
	}}
	srv, err := server.New(server.Config{}, server.Deps{Predictor: engine}, nil, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	serveCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(serveCtx, lis) }()
	srv.SetServing(true) // once the model is loaded and the backends answer

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	resp, err := prefetchv1.NewHintServiceClient(conn).Predict(ctx, &prefetchv1.PredictRequest{UserId: "alice"})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, h := range resp.GetHints() {
		fmt.Printf("%s %.2f warm=%v model=%s\n", h.GetPage(), h.GetProbability(), h.GetWarm(), resp.GetModelVersion())
	}
	stop()
	fmt.Println("serve:", <-done)
	// Output:
	// /shuttle/countdown/ 0.42 warm=true model=v1
	// serve: <nil>
}
