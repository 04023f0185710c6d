package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/model"
)

// Bounds on every wait of the suite, so that no fault leaves a test hanging.
const (
	startTimeout  = 45 * time.Second // a process until it is ready
	produceBudget = 3 * time.Minute  // one producer run
	settleTimeout = 60 * time.Second // the service until it converges after the stream
	quietFor      = 10 * time.Second // no change at all: stop waiting for convergence
	checkTimeout  = 30 * time.Second // one pass of the checker
	topic         = "clicks"
	group         = "prefetchd"
	partitions    = 4
	warmKeyPrefix = "page:" // the default --key-template page:{page}
	hintsPerClick = 3       // --k
)

// binDir holds prefetchd and devbroker, built once by TestMain.
var binDir string

// load is the size and pace of one scenario's click stream.
type load struct {
	users  int     // distinct user ids
	clicks int     // clicks per user, at most the model's max_seq_len
	rate   float64 // clicks per second over all users
}

func (l load) events() int { return l.users * l.clicks }

// vocabulary is the bundled model's vocabulary and history length: the
// checker maps pages to indices with it, as the service does.
type vocabulary struct {
	vocab  *model.Vocab
	canon  *features.Canonicalizer
	maxLen int
}

// loadVocabulary loads the bundled model, the one prefetchd serves without --model.
func loadVocabulary(t testing.TB) vocabulary {
	t.Helper()
	fsys, dir := embedded.Model()
	b, err := model.LoadBundleFS(fsys, dir)
	if err != nil {
		t.Fatalf("load the bundled model: %v", err)
	}
	canon, err := features.NewCanonicalizer(features.CanonicalizerConfig{})
	if err != nil {
		t.Fatalf("canonicalizer: %v", err)
	}
	return vocabulary{vocab: b.Vocab(), canon: canon, maxLen: b.Manifest().MaxSeqLen}
}

// plan is the ground truth of a stream: every user's pages in click order,
// distinct within a user (so that a lost or doubled click shows in the
// history), sent with users taking turns (see event).
type plan struct {
	runID string
	load  load
	users []string
	pages [][]string // by user, click order
	want  [][]int32  // vocabulary indices of pages
	start time.Time  // event time of event 0
}

// newPlan draws each user's pages from the vocabulary (seeded, so a
// scenario sends the same pages every run) and checks that each maps back to
// its own index through the service's canonicalization.
func newPlan(t testing.TB, v vocabulary, l load, seed uint64) *plan {
	t.Helper()
	if l.clicks > v.maxLen {
		t.Fatalf("plan: %d clicks per user exceed the history length %d; the checker needs whole sessions", l.clicks, v.maxLen)
	}
	if l.clicks > v.vocab.Len()-2 {
		t.Fatalf("plan: %d clicks per user exceed the %d pages of the vocabulary", l.clicks, v.vocab.Len()-2)
	}
	p := &plan{runID: strconv.FormatInt(time.Now().UnixNano(), 36), load: l, start: time.Now()}
	rng := rand.New(rand.NewPCG(seed, 7))
	for u := range l.users {
		p.users = append(p.users, fmt.Sprintf("u%03d-%s", u, p.runID))
		perm := rng.Perm(v.vocab.Len() - 2)
		var pages []string
		var want []int32
		for _, i := range perm[:l.clicks] {
			page := v.vocab.Page(int64(i + model.UnknownIndex + 1))
			idx := v.vocab.Index(v.canon.Canonical(page))
			if idx <= model.UnknownIndex {
				t.Fatalf("plan: vocabulary page %q does not map back to itself (index %d)", page, idx)
			}
			pages = append(pages, page)
			want = append(want, int32(idx))
		}
		p.pages = append(p.pages, pages)
		p.want = append(p.want, want)
	}
	return p
}

// event locates event i of the stream: users take turns, so event i is
// click i/users of user i%users.
func (p *plan) event(i int) (user, click int) { return i % len(p.users), i / len(p.users) }

// message is event i of the plan as the producer sends it: keyed by user,
// JSON as in features/EVENTS.md, with a unique event_id.
func (p *plan) message(i int) kafka.Message {
	u, clickNo := p.event(i)
	ev := map[string]string{
		"user_id":    p.users[u],
		"page":       p.pages[u][clickNo],
		"ts":         p.start.Add(time.Duration(i) * time.Millisecond).UTC().Format(time.RFC3339Nano),
		"session_id": "s-" + p.users[u],
		"event_id":   fmt.Sprintf("e-%s-%d", p.users[u], clickNo),
	}
	b, _ := json.Marshal(ev)
	return kafka.Message{Key: []byte(p.users[u]), Value: b}
}

// sentPerUser is how many clicks of each user are among the first n events.
func (p *plan) sentPerUser(n int) []int {
	c := make([]int, len(p.users))
	for i := range n {
		u, _ := p.event(i)
		c[u]++
	}
	return c
}

// producer sends a plan's events in order at the plan's rate with a kafka-go
// Writer, one acknowledged write at a time, so that the events acknowledged
// are always a prefix of the plan.
type producer struct {
	plan   *plan
	broker string
	acked  atomic.Int64
	retry  atomic.Int64 // writes attempted again after an error
}

func newProducer(p *plan, broker string) *producer {
	return &producer{plan: p, broker: broker}
}

// send writes events [acked, to) and returns when they are acknowledged,
// ctx ends, or a write keeps failing for 30 s.
func (pr *producer) send(ctx context.Context, to int) error {
	tr := &kafka.Transport{} // its own pool, closed on return
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{
		Addr: kafka.TCP(pr.broker), Topic: topic, Balancer: &kafka.Hash{}, Transport: tr,
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, BatchSize: 1,
		MaxAttempts: 3, WriteTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second,
	}
	defer w.Close()
	every := time.Duration(float64(time.Second) / pr.plan.load.rate)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := int(pr.acked.Load()); i < to; i++ {
		msg := pr.plan.message(i)
		failing := time.Now()
		for {
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := w.WriteMessages(wctx, msg)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil || time.Since(failing) > 30*time.Second {
				return fmt.Errorf("write event %d (user %s): %w", i, msg.Key, err)
			}
			pr.retry.Add(1)
			time.Sleep(200 * time.Millisecond)
		}
		pr.acked.Store(int64(i + 1))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// background runs send in a goroutine; the returned function waits for it
// and fails the test on a producer error.
func (pr *producer) background(t *testing.T, to int) (wait func()) {
	ctx, cancel := context.WithTimeout(context.Background(), produceBudget)
	errc := make(chan error, 1)
	go func() { errc <- pr.send(ctx, to) }()
	var done atomic.Bool
	wait = func() {
		t.Helper()
		if done.Swap(true) {
			return
		}
		defer cancel()
		if err := <-errc; err != nil {
			t.Fatalf("producer: %v", err)
		}
	}
	t.Cleanup(func() {
		cancel()
		if !done.Swap(true) {
			<-errc
		}
	})
	return wait
}

// waitAcked blocks until n events are acknowledged, at most d.
func (pr *producer) waitAcked(t *testing.T, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for pr.acked.Load() < int64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("producer: %d of %d events acknowledged after %v", pr.acked.Load(), n, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// buildBinaries compiles prefetchd and devbroker into a fresh folder.
func buildBinaries() (string, error) {
	dir, err := os.MkdirTemp("", "prefetchd-chaos-")
	if err != nil {
		return "", err
	}
	gobin := "go"
	if p := filepath.Join(os.Getenv("GOROOT"), "bin", "go"); os.Getenv("GOROOT") != "" {
		gobin = p
	}
	root, err := exec.Command(gobin, "env", "GOMOD").Output()
	if err != nil {
		return dir, fmt.Errorf("go env GOMOD: %w", err)
	}
	cmd := exec.Command(gobin, "build", "-o", dir+string(filepath.Separator), "./cmd/prefetchd", "./cmd/devbroker")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	if out, err := cmd.CombinedOutput(); err != nil {
		return dir, fmt.Errorf("go build: %w\n%s", err, out)
	}
	return dir, nil
}

// httpGet fetches url with a short timeout and returns status and body.
func httpGet(ctx context.Context, url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return resp.StatusCode, string(b), err
}

// metrics is one scrape of /metrics: every sample's value summed by metric
// name over its label sets, and the raw samples by full name with labels.
type metrics struct {
	sum map[string]float64
	raw map[string]float64
}

func parseMetrics(text string) metrics {
	m := metrics{sum: map[string]float64{}, raw: map[string]float64{}}
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		full := line[:i]
		name, _, _ := strings.Cut(full, "{")
		m.sum[name] += v
		m.raw[full] = v
	}
	return m
}

// has reports whether the scrape holds the metric at all.
func (m metrics) has(name string) bool {
	_, ok := m.sum[name]
	return ok
}

// newRedisClient is the checker's own client: standalone for one address,
// cluster for several.
func newRedisClient(addrs []string, cluster bool) redis.UniversalClient {
	return redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs: addrs, IsClusterMode: cluster, ContextTimeoutEnabled: true,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
	})
}
