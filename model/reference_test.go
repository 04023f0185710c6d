package model

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestReferenceFixtures(t *testing.T) {
	dirs, err := filepath.Glob("testdata/*/reference.json")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, refPath := range dirs {
		dir := filepath.Dir(refPath)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			seq, err := LoadModel(filepath.Join(dir, "model.onnx"))
			if err != nil {
				t.Fatalf("LoadModel: %v", err)
			}
			var step *Model
			if _, err := os.Stat(filepath.Join(dir, "step.onnx")); err == nil {
				if step, err = LoadModel(filepath.Join(dir, "step.onnx")); err != nil {
					t.Fatalf("LoadModel(step): %v", err)
				}
			}
			f, err := os.Open(refPath)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			ref, err := ReadReference(f)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Verify(ctx, seq, step, ref)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if len(rep.Cases) != len(ref.Cases) {
				t.Fatalf("verified %d cases, want %d", len(rep.Cases), len(ref.Cases))
			}
			for i, e := range rep.Cases {
				if e > 1e-5 {
					t.Errorf("case %d: max abs error %g, want <= 1e-5", i, e)
				}
			}
			if ref.StepCheck != nil {
				if step == nil {
					t.Fatalf("reference has a step check but no step.onnx")
				}
				if rep.Step < 0 || rep.Step > 1e-5 {
					t.Errorf("step check: max abs error %g, want <= 1e-5", rep.Step)
				}
			}
			t.Logf("max abs error %g (step %g)", rep.Max, rep.Step)
		})
	}
}
