package server

import (
	"math"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/prefetchd/prefetchd/internal/server/servertest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// FuzzPredictQuery checks that validation either refuses a request with
// INVALID_ARGUMENT or yields a query within every limit.
func FuzzPredictQuery(f *testing.F) {
	f.Add("u", "", int32(0), false, 0.5, true)
	f.Add("", "/a\x00/b", int32(3), true, -1.0, false)
	f.Add(strings.Repeat("x", 300), "/a", int32(101), true, 1.5, true)
	f.Add("u", "\x00\x00", int32(-5), true, math.NaN(), true)
	s, err := New(Config{}, Deps{Predictor: &servertest.Predictor{}}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, user, pages string, k int32, hasK bool, threshold float64, hasThreshold bool) {
		req := &prefetchv1.PredictRequest{UserId: user}
		if pages != "" {
			req.Pages = strings.Split(pages, "\x00")
		}
		if hasK {
			req.K = &k
		}
		if hasThreshold {
			req.Threshold = &threshold
		}
		q, err := s.predictQuery(req)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("error %v, want InvalidArgument", err)
			}
			return
		}
		if len(q.Pages) == 0 && (q.UserID == "" || len(q.UserID) > DefaultMaxIDBytes) {
			t.Fatalf("accepted user %q without pages", q.UserID)
		}
		if len(q.Pages) > DefaultMaxPages {
			t.Fatalf("accepted %d pages", len(q.Pages))
		}
		for _, p := range q.Pages {
			if p == "" || len(p) > DefaultMaxPageBytes {
				t.Fatalf("accepted page %q", p)
			}
		}
		if q.K < 0 || q.K > MaxK || (hasK && q.K == 0) {
			t.Fatalf("accepted k %d", q.K)
		}
		if hasThreshold && !(q.Threshold >= 0 && q.Threshold <= 1) || !hasThreshold && q.Threshold != -1 {
			t.Fatalf("accepted threshold %v (set %v)", q.Threshold, hasThreshold)
		}
	})
}
