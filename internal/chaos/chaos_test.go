package chaos

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/prefetchd/prefetchd/features"
)

func TestMain(m *testing.M) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", errNoRedisServer)
		os.Exit(1)
	}
	dir, err := buildBinaries()
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos: build the binaries:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "chaos: goroutines left behind:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// outageFor is how long a killed Redis stays down.
const outageFor = 8 * time.Second

// scenario is one fault injected into a running pipeline.
type scenario struct {
	name string
	cfg  envConfig
	run  func(e *env)
}

// scenarios are the faults of the short set, in the order they run; the
// long set (build tag chaos) adds more with longer streams.
func scenarios(l load) []scenario {
	shared := envConfig{history: features.BackendRedis, persist: true, replicas: 1, load: l}
	all := []scenario{
		{"redis_kill9_8s_persistent", shared, func(e *env) {
			wait := e.prod.background(e.t, l.events())
			e.prod.waitAcked(e.t, l.events()/6, time.Minute)
			killed := time.Now()
			e.t.Logf("fault: kill -9 redis at event %d", e.prod.acked.Load())
			e.redis[0].kill()
			e.expectUnready(5 * time.Second)
			time.Sleep(time.Until(killed.Add(outageFor)))
			e.redis[0].start()
			e.t.Logf("fault: redis back at event %d", e.prod.acked.Load())
			wait()
			e.verify(expect{exactCounts: true})
		}},
		{"redis_sigstop_4s", shared, func(e *env) {
			wait := e.prod.background(e.t, l.events())
			e.prod.waitAcked(e.t, l.events()/4, time.Minute)
			e.freeze(e.redis[0], 4*time.Second)
			wait()
			e.verify(expect{exactCounts: true})
		}},
		{"broker_restart_topic_recreated", shared, func(e *env) {
			half := l.events() / 2
			e.prod.background(e.t, half)()
			e.t.Log("first half sent; waiting until it is applied")
			e.verify(expect{exactCounts: true})
			e.outage(e.broker, time.Second)
			e.prod.background(e.t, l.events())()
			e.verify(expect{exactCounts: true, resets: true})
		}},
		{"group_offsets_reset_redelivery", shared, func(e *env) {
			e.prod.background(e.t, l.events())()
			e.verify(expect{exactCounts: true})
			e.svcs[0].stop(20 * time.Second)
			e.rewindGroup()
			e.svcs[0].start()
			e.verify(expect{redelivered: l.events()})
		}},
		{"prefetchd_kill9_restart", shared, func(e *env) {
			wait := e.prod.background(e.t, l.events())
			e.prod.waitAcked(e.t, l.events()/3, time.Minute)
			e.outage(e.svcs[0].proc, time.Second)
			wait()
			e.verify(expect{})
		}},
		{"replicas_one_killed", envConfig{history: features.BackendRedis, persist: true, replicas: 3, load: l}, func(e *env) {
			wait := e.prod.background(e.t, l.events())
			e.prod.waitAcked(e.t, l.events()/3, time.Minute)
			e.t.Logf("fault: kill -9 %s for good at event %d", e.svcs[2].name, e.prod.acked.Load())
			e.svcs[2].kill()
			wait()
			e.verify(expect{})
		}},
		{"cache_redis_restart_empty", envConfig{history: features.BackendMemory, persist: false, replicas: 1, load: l}, func(e *env) {
			wait := e.prod.background(e.t, l.events())
			e.prod.waitAcked(e.t, l.events()/3, time.Minute)
			// Back at once: no prefetch write fails in between, so only a
			// service that notices the new server knows its keys are gone.
			e.outage(e.redis[0], 0)
			wait()
			e.verify(expect{exactCounts: true})
		}},
	}
	return append(all, longScenarios(l)...)
}

// TestFaults runs every scenario against real processes and checks the
// ground truth: no click lost, none applied twice, no false "warm".
func TestFaults(t *testing.T) {
	l := streamLoad()
	t.Logf("set %s: %d users × %d clicks at %g/s per scenario", setName, l.users, l.clicks, l.rate)
	for _, sc := range scenarios(l) {
		t.Run(sc.name, func(t *testing.T) {
			sc.run(newEnv(t, sc.cfg))
		})
	}
}

func TestDiffHistory(t *testing.T) {
	for _, tc := range []struct {
		name      string
		want, got []int32
		lost, dbl int
		reordered bool
	}{
		{"same", []int32{5, 6, 7}, []int32{5, 6, 7}, 0, 0, false},
		{"one lost", []int32{5, 6, 7}, []int32{5, 7}, 1, 0, false},
		{"all lost", []int32{5, 6}, nil, 2, 0, false},
		{"applied twice", []int32{5, 6, 7}, []int32{5, 6, 6, 7}, 0, 1, false},
		{"never sent", []int32{5, 6}, []int32{5, 6, 9}, 0, 1, false},
		{"reordered", []int32{5, 6, 7}, []int32{5, 7, 6}, 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lost, dbl, re := diffHistory(tc.want, tc.got)
			if lost != tc.lost || dbl != tc.dbl || re != tc.reordered {
				t.Fatalf("diffHistory(%v, %v) = lost %d, doubled %d, reordered %t; want %d, %d, %t",
					tc.want, tc.got, lost, dbl, re, tc.lost, tc.dbl, tc.reordered)
			}
		})
	}
}

func TestParseMetrics(t *testing.T) {
	m := parseMetrics("# HELP x y\n# TYPE a counter\na 3\nb{l=\"1\"} 2\nb{l=\"2\"} 5.5\nc_bucket{le=\"+Inf\"} 1e+06\n")
	for name, want := range map[string]float64{"a": 3, "b": 7.5, "c_bucket": 1e6} {
		if got := m.sum[name]; got != want {
			t.Errorf("sum[%s] = %g, want %g", name, got, want)
		}
	}
	if m.has("d") {
		t.Errorf("has(d) = true for a metric not in the scrape")
	}
}
