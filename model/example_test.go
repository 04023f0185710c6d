package model_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/prefetchd/prefetchd/model"
)

// Load a bundle, map pages to indices with its vocabulary, and score the
// next page of two histories at once.
func ExampleLoadBundle() {
	b, err := model.LoadBundle("testdata/gru-probs-opset13")
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v := b.Vocab()
	histories := [][]int64{
		{v.Index(v.Page(26)), v.Index(v.Page(127)), v.Index(v.Page(79))},
		{v.Index("/not/in/vocabulary")},
	}
	probs, err := b.Predict(ctx, histories)
	if err != nil {
		log.Fatal(err)
	}
	for i, p := range probs {
		best := 0
		for j := range p {
			if p[j] > p[best] {
				best = j
			}
		}
		fmt.Printf("history %d: next %s (p=%.3f of %d pages)\n", i, v.Page(int64(best)), p[best], len(p))
	}
	fmt.Println("step form:", b.HasStep(), "state size:", b.StateSize())
	// Output:
	// history 0: next /page/115 (p=0.038 of 200 pages)
	// history 1: next /page/86 (p=0.067 of 200 pages)
	// step form: true state size: 32
}

// Feed clicks one at a time, keeping the user's recurrent state between
// them; the scores match Predict on the whole history.
func ExampleBundle_Step() {
	b, err := model.LoadBundle("testdata/gru-probs-opset13")
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var state, probs []float32
	for _, page := range []int64{26, 127, 79} {
		if probs, state, err = b.Step(ctx, page, state, probs); err != nil {
			log.Fatal(err)
		}
	}
	seq, err := b.PredictOne(ctx, []int64{26, 127, 79}, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("step %.4f, sequence %.4f\n", probs[115], seq[115])
	// Output:
	// step 0.0380, sequence 0.0380
}
