package app

import (
	"math"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/model"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
	"github.com/prefetchd/prefetchd/training"
)

// TestTrainPublishServe trains a GRU on a small split of the NASA sessions
// while the service runs on a watched repository, publishes it, and expects
// the running service to answer Predict over gRPC from the new version with
// the trained model's probabilities; clicks after the swap use its step form.
func TestTrainPublishServe(t *testing.T) {
	all, err := embedded.NASASessions()
	if err != nil {
		t.Fatal(err)
	}
	repo := filepath.Join(t.TempDir(), "models")
	publishBundled(t, repo, "v1", time.Now().Add(-time.Hour))

	rs := redistest.Start(t)
	kb := kafkatest.Start(t, "clicks")
	cfg := testConfig([]string{kb.Addr()}, rs.Addr())
	cfg.ModelRepo = repo
	cfg.Threshold = 0.05
	svc := startService(t, cfg, 120*time.Second)
	ctx := svc.ctx

	_, bundle, err := training.Run(ctx, nil, "nasa-small", all[:3000], training.Config{
		Name: "default", Version: "v2",
		Vocab: training.VocabConfig{MinCount: 2, MaxSize: 300},
		GRU:   training.GRUConfig{Embedding: 8, Hidden: 16, Epochs: 1, Seed: 7},
	})
	if err != nil {
		t.Fatalf("train: %v", err)
	}
	dir, err := training.Publish(repo, bundle)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	trained, err := model.LoadBundle(dir)
	if err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient(svc.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hints := prefetchv1.NewHintServiceClient(conn)
	pages := []string{"/page/3", "/page/4"}
	var resp *prefetchv1.PredictResponse
	for {
		k, thr := int32(5), 0.0
		if resp, err = hints.Predict(ctx, &prefetchv1.PredictRequest{Pages: pages, K: &k, Threshold: &thr}); err != nil {
			t.Fatalf("Predict: %v", err)
		}
		if resp.ModelVersion == "v2" {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the published version never served; still %s", resp.ModelVersion)
		case <-time.After(100 * time.Millisecond):
		}
	}
	v := trained.Vocab()
	want, err := trained.PredictOne(ctx, []int64{v.Index(pages[0]), v.Index(pages[1])}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Hints) != 5 {
		t.Fatalf("%d hints, want 5", len(resp.Hints))
	}
	for _, h := range resp.Hints {
		if d := math.Abs(float64(h.Probability - want[v.Index(h.Page)])); d > 1e-5 {
			t.Errorf("hint %s: probability %v, trained model gives %v", h.Page, h.Probability, want[v.Index(h.Page)])
		}
	}

	// A click after the swap goes through the new model's step form.
	kb.Produce(t, "clicks", kafkatest.Message("after-swap", clickJSON("after-swap", "/page/3", time.Now())))
	for metricSum(httpGet(t, ctx, "http://"+svc.addrs.Admin+"/metrics"), `prefetchd_clicks_total`) < 1 {
		select {
		case <-ctx.Done():
			t.Fatal("click after the swap not applied")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if n := metricSum(httpGet(t, ctx, "http://"+svc.addrs.Admin+"/metrics"), "prefetchd_engine_states_rebuilt_total"); !trained.HasStep() || n < 1 {
		t.Errorf("step form %v, recurrent states built %v; want the click scored by the step form", trained.HasStep(), n)
	}
	svc.shutdown(t)
}
