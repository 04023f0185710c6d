package transitions_test

import (
	"context"
	"fmt"
	"time"

	"github.com/prefetchd/prefetchd/transitions"
)

// Thirty users open a page nobody knew from the home page; the statistics
// of the home page then give it most of the online share.
func ExampleNewMemory() {
	ctx := context.Background()
	stats, err := transitions.NewMemory(transitions.Config{}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	var ts []transitions.Transition
	for range 30 {
		ts = append(ts, transitions.Transition{From: "/", To: "/news/launch", ToUnknown: true, At: at})
	}
	for range 10 {
		ts = append(ts, transitions.Transition{From: "/", To: "/about", At: at})
	}
	if err := stats.Observe(ctx, ts); err != nil {
		fmt.Println(err)
		return
	}
	d, err := stats.Lookup(ctx, []string{"/"}, at, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	w := stats.Blend.Weight(d[0].N)
	fmt.Printf("evidence %.0f, online share %.2f\n", d[0].N, w)
	for _, n := range d[0].Next {
		// A page outside the vocabulary, the model giving 0.02 to an
		// unknown page; /about as if the model gave it 0.1.
		known, pModel, cOut := n.Page == "/about", 0.02, 30.0
		if known {
			pModel = 0.1
		}
		fmt.Printf("%s %.3f\n", n.Page, stats.Blend.Next(w, d[0], n, pModel, known, cOut))
	}
	// Output:
	// evidence 40, online share 0.44
	// /news/launch 0.344
	// /about 0.167
}
