package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/engine"
	"github.com/prefetchd/prefetchd/internal/hint"
)

// startDemo runs the service as `make run` does (embedded broker, store,
// model and replay, threshold 0.2) on ephemeral ports and waits until it is
// ready and the status page holds at least n samples.
func startDemo(t *testing.T, n int, timeout time.Duration) *service {
	t.Helper()
	cfg := Default()
	cfg.Listen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Replay, cfg.Threshold = ReplayEmbedded, 0.2
	svc := startService(t, cfg, timeout)
	eventually(t, svc.ctx, "ready", func() bool {
		code, _ := get(t, svc.ctx, "http://"+svc.addrs.Admin+"/readyz")
		return code == http.StatusOK
	})
	samples := regexp.MustCompile(`(\d+) samples, one every`)
	eventually(t, svc.ctx, strconv.Itoa(n)+" status samples", func() bool {
		_, body := get(t, svc.ctx, "http://"+svc.addrs.Admin+"/")
		m := samples.FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("status page names no sample count:\n%s", body)
		}
		k, _ := strconv.Atoi(m[1])
		return k >= n
	})
	return svc
}

// TestStatusPage serves the status page of a service on embedded defaults
// and checks what it shows and how it answers.
func TestStatusPage(t *testing.T) {
	svc := startDemo(t, 3, 60*time.Second)
	base := "http://" + svc.addrs.Admin

	req, _ := http.NewRequestWithContext(svc.ctx, http.MethodGet, base+"/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET / = %d, want 200:\n%s", resp.StatusCode, page)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type = %q, want text/html; charset=utf-8", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	version := svc.readyVersion(t)
	for _, c := range []struct{ name, want string }{
		{"auto-refresh", `<meta http-equiv="refresh" content="5">`},
		{"readiness", `<span class="badge ready">ready</span>`},
		{"active model version", "<td>" + version + "</td>"},
		{"offline report from the bundle", "exported <b>gru</b>"},
		{"offline results", "<td>popularity</td>"},
		{"throughput chart", `id="chart-throughput"`},
		{"precision chart", `id="chart-precision"`},
		{"coverage chart", `id="chart-coverage"`},
		{"lag charts", `id="chart-lag-messages"`},
		{"version in the live table", `<table id="versions">`},
		{"lag tile", "lag, messages<b>"},
		{"no external assets", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.want == "" {
				if m := regexp.MustCompile(`(src|href)="(https?:)?//`).FindString(page); m != "" {
					t.Errorf("page loads an external asset: %s", m)
				}
				if strings.Contains(page, "<script") {
					t.Error("page has a script")
				}
				return
			}
			if !strings.Contains(page, c.want) {
				t.Errorf("page lacks %q:\n%s", c.want, page)
			}
		})
	}
	t.Run("events per second", func(t *testing.T) {
		// The replay sends 200/s; right after the group joins the backlog
		// of the join comes at once, so only the order of magnitude is sure.
		// On a loaded machine the first events may come after the first
		// look: the page is read again until they show, for up to 30 s.
		tile := regexp.MustCompile(`events/s<b>([0-9.]+)</b>`)
		text := page
		deadline := time.Now().Add(30 * time.Second)
		for {
			m := tile.FindStringSubmatch(text)
			if m == nil {
				t.Fatalf("no events/s tile")
			}
			v, _ := strconv.ParseFloat(m[1], 64)
			if v > 5000 {
				t.Fatalf("events/s = %v, want of the order of the replay's 200", v)
			}
			if v > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("events/s still 0 after 30 s of replay at 200/s")
			}
			time.Sleep(500 * time.Millisecond)
			r, err := http.Get(base + "/")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			text = string(b)
		}
	})
	t.Run("charts have lines", func(t *testing.T) {
		if n := strings.Count(page, "<polyline"); n < 3 {
			t.Errorf("%d polylines, want the throughput lines at least (3)", n)
		}
	})
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/nothing-here", http.StatusNotFound},
		{http.MethodPost, "/", http.StatusMethodNotAllowed},
	} {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(svc.ctx, c.method, base+c.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("%s %s = %d, want %d", c.method, c.path, resp.StatusCode, c.want)
			}
		})
	}
	svc.shutdown(t)
}

// readyVersion returns the model version /readyz names.
func (s *service) readyVersion(t *testing.T) string {
	t.Helper()
	_, body := get(t, s.ctx, "http://"+s.addrs.Admin+"/readyz")
	_, v, ok := strings.Cut(strings.TrimSpace(body), "model_version=")
	if !ok {
		t.Fatalf("/readyz = %q, want ready model_version=...", body)
	}
	return v
}

// TestStatusPageEscapes fills every place of the page that shows text from
// outside (user ids and pages from Kafka, model versions, readiness
// reasons, the bundle's report.json) with markup and checks that the page
// shows it as text.
func TestStatusPageEscapes(t *testing.T) {
	const evil = `<script>alert(1)</script>"'&`
	const escaped = `&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;&amp;`
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A bundle folder whose report.json names things with markup.
	dir := t.TempDir()
	fsys, mdir := embedded.Model()
	for _, name := range []string{"model.onnx", "step.onnx", "vocab.txt", "manifest.json"} {
		b, err := fs.ReadFile(fsys, mdir+"/"+name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	report := `{"dataset":"` + jsonEsc(evil) + `","exported":"` + jsonEsc(evil) + `","verdict":"` + jsonEsc(evil) +
		`","results":[{"model":"` + jsonEsc(evil) + `"}]}`
	if err := os.WriteFile(filepath.Join(dir, "report.json"), []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Default()
	cfg.Model = dir
	canon, err := canonicalizer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	models, err := openModels(ctx, cfg, canon, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	var parts lateParts
	parts.models.Store(models)
	ready, err := newReadiness(nil)
	if err != nil {
		t.Fatal(err)
	}
	ready.add("kafka", func(context.Context) error { return errors.New(evil) })
	ready.evaluate(ctx)

	p := newStatusPage(cfg, nil, ready, &parts)
	t0 := time.Now().Add(-time.Minute)
	for i := range 5 {
		p.record(statusSample{at: t0.Add(time.Duration(i) * 10 * time.Second), lagMessages: math.NaN(), lagSeconds: math.NaN(),
			versions: []versionCounts{{version: evil, issued: uint64(10 * i), used: uint64(5 * i), clicks: uint64(20 * i), hot: uint64(4 * i)}}})
	}
	p.noteSamples([]*engine.Sample{{UserID: evil, Page: evil, ModelVersion: evil, History: 3,
		Hints: []hint.Hint{{Page: evil, Probability: 0.5}}, At: time.Now()}})

	srv := httptest.NewServer(adminMux(prometheus.NewRegistry(), ready, &parts, p, false))
	defer srv.Close()
	code, page := get(t, ctx, srv.URL+"/")
	if code != http.StatusOK {
		t.Fatalf("GET / = %d:\n%s", code, page)
	}
	if strings.Contains(page, "<script>") {
		t.Errorf("page has unescaped markup from outside:\n%s", page)
	}
	for _, c := range []struct{ name, want string }{
		{"readiness reason", "<li>kafka: " + escaped + "</li>"},
		{"report dataset", "dataset <b>" + escaped + "</b>"},
		{"report result", "<td>" + escaped + "</td><td class=\"n\">"},
		{"hint user and page", "<td>" + escaped + "</td><td>" + escaped + "</td>"},
		{"hint pages", escaped + " 0.50</td>"},
		{"chart legend", `fill="#222">` + svgEscaped(evil) + "</text>"},
		{"version table", "<tr><td>" + escaped + "</td><td class=\"n\">40</td>"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(page, c.want) {
				t.Errorf("page lacks %q:\n%s", c.want, page)
			}
		})
	}
}

func jsonEsc(s string) string { return strings.ReplaceAll(s, `"`, `\"`) }

// svgEscaped is s as template.HTMLEscapeString writes it (the charts' text).
func svgEscaped(s string) string {
	return strings.NewReplacer(`<`, "&lt;", `>`, "&gt;", `"`, "&#34;", `'`, "&#39;", `&`, "&amp;").Replace(s)
}

// TestStatusPageInBrowser loads the status page of a service on embedded
// defaults in headless Chromium (Debian's chromium package, which
// `scripts/setup.sh test` installs) and checks the rendered DOM and a
// screenshot: the charts are there and drawn, the page is not blank.
func TestStatusPageInBrowser(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (%v): run scripts/setup.sh test, or apt-get install -y chromium", err)
	}
	svc := startDemo(t, 4, 60*time.Second)
	url := "http://" + svc.addrs.Admin + "/"
	dir := t.TempDir()
	run := func(args ...string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(svc.ctx, 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, browser, append([]string{"--headless", "--no-sandbox", "--disable-gpu",
			"--hide-scrollbars", "--no-first-run", "--user-data-dir=" + filepath.Join(dir, "profile")}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+dir)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s: %v\n%s", browser, strings.Join(args, " "), err, stderr.String())
		}
		return stdout.Bytes()
	}

	dom := string(run("--dump-dom", url))
	t.Run("rendered DOM", func(t *testing.T) {
		if n := strings.Count(dom, `<svg class="chart"`); n != 5 {
			t.Errorf("%d charts in the DOM, want 5", n)
		}
		if n := strings.Count(dom, "<polyline"); n < 3 {
			t.Errorf("%d chart lines in the DOM, want at least 3", n)
		}
		for _, want := range []string{"Active model", "Offline report", "Recent hints", `class="badge ready"`} {
			if !strings.Contains(dom, want) {
				t.Errorf("DOM lacks %q", want)
			}
		}
	})

	shot := filepath.Join(dir, "status.png")
	run("--screenshot="+shot, "--window-size=1280,1600", url)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	img, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatalf("decode screenshot: %v", err)
	}
	t.Run("screenshot", func(t *testing.T) {
		if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 1600 {
			t.Errorf("screenshot is %v, want 1280×1600", b)
		}
		colours := countColours(img)
		if len(colours) < 20 {
			t.Errorf("screenshot has %d colours: blank or unstyled", len(colours))
		}
		// The legend squares are 10×10 (100 pixels each); a drawn line adds
		// several hundred pixels of its exact colour.
		for _, c := range []struct {
			name    string
			rgb     [3]uint8
			legends int
		}{
			{"events and lag lines", [3]uint8{0x1f, 0x77, 0xb4}, 2},
			{"warms line", [3]uint8{0x2c, 0xa0, 0x2c}, 1},
			{"precision and coverage lines", [3]uint8{0x94, 0x67, 0xbd}, 2},
		} {
			if got, min := colours[c.rgb], 100*c.legends+150; got < min {
				t.Errorf("%s: %d pixels of #%02x%02x%02x, want at least %d (legends and lines)", c.name, got, c.rgb[0], c.rgb[1], c.rgb[2], min)
			}
		}
	})
	if t.Failed() {
		if b, err := os.ReadFile(shot); err == nil {
			keep := filepath.Join(os.TempDir(), "prefetchd-status-failed.png")
			_ = os.WriteFile(keep, b, 0o644)
			t.Logf("screenshot kept at %s", keep)
		}
	}
	svc.shutdown(t)
}

// countColours counts the pixels of each opaque colour.
func countColours(img image.Image) map[[3]uint8]int {
	out := map[[3]uint8]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			out[[3]uint8{uint8(r >> 8), uint8(g >> 8), uint8(bl >> 8)}]++
		}
	}
	return out
}

// TestStatusChartData checks the numbers behind the charts: rates between
// samples, precision and coverage per version over the trailing minute
// (gaps where nothing was counted), and that the ring keeps the last hour.
func TestStatusChartData(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	ss := []statusSample{
		{at: at(0), events: 0, predictions: 0, warms: 0, versions: []versionCounts{{"v1", 0, 0, 0, 0}}},
		{at: at(10), events: 1000, predictions: 900, warms: 100, versions: []versionCounts{{"v1", 100, 50, 200, 40}}},
		{at: at(20), events: 3000, predictions: 2900, warms: 100, versions: []versionCounts{{"v1", 100, 50, 300, 40}}},
		// v2 appears; v1 counts nothing more
		{at: at(80), events: 3000, predictions: 2900, warms: 200, versions: []versionCounts{{"v1", 100, 50, 300, 40}, {"v2", 100, 90, 100, 25}}},
	}
	charts := map[string]chart{}
	for _, c := range chartData(ss) {
		charts[c.ID] = c
	}
	values := func(id, name string) []float64 {
		t.Helper()
		for _, s := range charts[id].Series {
			if s.Name == name {
				out := make([]float64, len(s.Points))
				for i, p := range s.Points {
					out[i] = p.v
				}
				return out
			}
		}
		t.Fatalf("chart %s has no series %s", id, name)
		return nil
	}
	nan := math.NaN()
	for _, c := range []struct {
		chart, series string
		want          []float64
	}{
		{"throughput", "events", []float64{100, 200, 0}},
		{"throughput", "predictions", []float64{90, 200, 0}},
		{"throughput", "warms", []float64{10, 0, 100.0 / 60}},
		// trailing minute: at 80 s the window starts at the 20 s sample
		{"precision", "v1", []float64{0.5, 0.5, nan}},
		{"precision", "v2", []float64{nan, nan, 0.9}},
		{"coverage", "v1", []float64{0.2, 40.0 / 300, nan}},
		{"coverage", "v2", []float64{nan, nan, 0.25}},
	} {
		t.Run(c.chart+"/"+c.series, func(t *testing.T) {
			got := values(c.chart, c.series)
			if len(got) != len(c.want) {
				t.Fatalf("%d points %v, want %v", len(got), got, c.want)
			}
			for i := range got {
				if math.IsNaN(c.want[i]) != math.IsNaN(got[i]) || (!math.IsNaN(got[i]) && math.Abs(got[i]-c.want[i]) > 1e-9) {
					t.Fatalf("points %v, want %v", got, c.want)
				}
			}
		})
	}
	t.Run("ring keeps the last hour", func(t *testing.T) {
		p := newStatusPage(Default(), nil, nil, &lateParts{})
		n := len(p.ring)
		if n != int(time.Hour/statusEvery) {
			t.Fatalf("ring of %d samples, want an hour's (%d)", n, int(time.Hour/statusEvery))
		}
		for i := range n + 7 {
			p.record(statusSample{at: at(i), events: uint64(i)})
		}
		got := p.samples()
		if len(got) != n || got[0].events != 7 || got[n-1].events != uint64(n+6) {
			t.Fatalf("%d samples from %d to %d, want %d from 7 to %d", len(got), got[0].events, got[len(got)-1].events, n, n+6)
		}
		for i := 1; i < len(got); i++ {
			if got[i].events != got[i-1].events+1 {
				t.Fatalf("samples out of order at %d: %d after %d", i, got[i].events, got[i-1].events)
			}
		}
	})
}

// TestStatusPageBeforeModel opens the status page of a service whose model
// repository holds no valid version yet: the page answers, says not ready
// and why, and that there is no model.
func TestStatusPageBeforeModel(t *testing.T) {
	repo := t.TempDir()
	if err := os.MkdirAll(filepath.Join(repo, "default", "half"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "default", "half", "model.onnx"), []byte("onnx"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Default()
	cfg.Listen, cfg.AdminListen, cfg.Replay, cfg.ModelRepo = "127.0.0.1:0", "127.0.0.1:0", ReplayNone, repo
	ctx, addrs := startListening(t, cfg, 60*time.Second)
	var page string
	eventually(t, ctx, "the status page naming the missing model", func() bool {
		var code int
		code, page = get(t, ctx, "http://"+addrs.Admin+"/")
		return code == http.StatusOK && strings.Contains(page, "<li>model: no valid model version")
	})
	for _, want := range []string{`<span class="badge notready">not ready</span>`, "<p>no model yet: ", "half", "the pipeline starts once a model is live"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q:\n%s", want, page)
		}
	}
}

// startListening runs the service with cfg until the test ends and returns
// as soon as its ports listen (before the model is loaded), with a context
// that ends at timeout.
func startListening(t *testing.T, cfg Config, timeout time.Duration) (context.Context, Addrs) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	runCtx, stop := context.WithCancel(ctx)
	listening, done := make(chan Addrs, 1), make(chan error, 1)
	go func() {
		done <- RunWith(runCtx, cfg, slog.New(slog.DiscardHandler), Options{Listening: func(a Addrs) { listening <- a }})
	}()
	var addrs Addrs
	select {
	case addrs = <-listening:
	case err := <-done:
		t.Fatalf("service stopped before listening: %v", err)
	case <-ctx.Done():
		t.Fatal("service did not listen in time")
	}
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
	})
	return ctx, addrs
}

// TestChartLegendWraps: a legend too wide for one row (many model
// versions) wraps onto further rows inside the chart, which grows to hold
// them, so no entry is cut or drawn outside it.
func TestChartLegendWraps(t *testing.T) {
	var ss []series
	for i := range 12 {
		ss = append(ss, series{Name: fmt.Sprintf("version-%02d", i), Color: "#000000"})
	}
	out := string(chart{ID: "c", Title: "t", Series: ss}.svg())
	m := regexp.MustCompile(`viewBox="0 0 (\d+) (\d+)"`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no viewBox in %s", out)
	}
	width, _ := strconv.ParseFloat(m[1], 64)
	height, _ := strconv.ParseFloat(m[2], 64)
	if height <= chartH {
		t.Errorf("height %v with 12 legend entries, want more than one row's %v", height, chartH)
	}
	for _, e := range regexp.MustCompile(`<text x="([\d.]+)" y="([\d.]+)" font-size="11" fill="#222">(version-\d+)</text>`).FindAllStringSubmatch(out, -1) {
		x, _ := strconv.ParseFloat(e[1], 64)
		y, _ := strconv.ParseFloat(e[2], 64)
		if end := x + 7*float64(len(e[3])); end > width || y > height {
			t.Errorf("legend %s at (%v, %v) ends at %v, outside the %vx%v chart", e[3], x, y, end, width, height)
		}
	}
	if n := strings.Count(out, "version-"); n != 12 {
		t.Errorf("%d legend entries drawn, want 12", n)
	}
}
