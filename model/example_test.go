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

// Ask for the hints of each click: the three most probable next pages at
// or above 2%. On a bundle of 16,384 pages or more Scoring reports a
// clustered scorer and the same call scores only the likeliest clusters.
func ExampleBundle_StepTopK() {
	b, err := model.LoadBundle("testdata/gru-probs-opset13")
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var state []float32
	var hints []model.Hint
	for _, page := range []int64{26, 127, 79} {
		if hints, state, err = b.StepTopK(ctx, page, state, 3, 0.02, hints); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println("approximate:", b.Scoring().Approximate)
	for _, h := range hints {
		fmt.Printf("%s %.4f\n", b.Vocab().Page(h.Page), h.Prob)
	}
	// Output:
	// approximate: false
	// /page/115 0.0380
	// /page/66 0.0349
	// /page/26 0.0279
}
