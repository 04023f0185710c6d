package app

import (
	"bytes"
	"context"
	_ "embed" // the page template
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"math"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/engine"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/training"
)

// The status page's sampling: a sample every statusEvery, an hour of them.
const (
	statusEvery   = 2 * time.Second
	statusSpan    = time.Hour
	statusRefresh = 5 // seconds between the page's reloads
	// ratioWindow is the trailing window of the precision and coverage
	// charts: each point is used/issued (warm clicks/clicks) over it.
	ratioWindow = time.Minute
	// recentHints is how many sampled clicks the page lists.
	recentHints = 10
	// maxReportBytes bounds the report.json read for the page.
	maxReportBytes = 4 << 20
)

//go:embed status.html
var statusHTML string

var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"pct":  func(v float64) string { return fmt.Sprintf("%.1f%%", 100*v) },
	"num":  func(v float64) string { return fmt.Sprintf("%.4f", v) },
	"rate": func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"utc":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
}).Parse(statusHTML))

// versionCounts are one model version's running totals from the evaluator.
type versionCounts struct {
	version                   string
	issued, used, clicks, hot uint64
}

// statusSample is what the page knows at one moment; the counters are
// running totals, the lag values as last reported (NaN: unknown).
type statusSample struct {
	at                         time.Time
	events, predictions, warms uint64
	lagMessages, lagSeconds    float64
	versions                   []versionCounts
	hasPipeline                bool
}

// hintRow is one sampled click and the pages chosen for it.
type hintRow struct {
	At           time.Time
	User, Page   string
	ModelVersion string
	History      int
	Hints        []string // "page 0.42"
}

// statusPage is the admin port's "/": a page of the service's state drawn
// from an in-process ring of samples (an hour at one per statusEvery) and
// the live parts. Safe for concurrent use.
type statusPage struct {
	cfg    Config
	gather prometheus.Gatherer // nil: no lag figures
	ready  *readiness
	parts  *lateParts

	// mu guards the fields below.
	mu      sync.Mutex
	ring    []statusSample // oldest first once full: ring[next:] then ring[:next]
	next    int
	full    bool
	hints   []hintRow              // newest first
	reports map[string]*reportView // by model version
}

func newStatusPage(cfg Config, gather prometheus.Gatherer, ready *readiness, parts *lateParts) *statusPage {
	return &statusPage{
		cfg: cfg, gather: gather, ready: ready, parts: parts,
		ring:    make([]statusSample, int(statusSpan/statusEvery)),
		reports: map[string]*reportView{},
	}
}

// run takes a sample at once and then every interval until ctx ends.
func (p *statusPage) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		p.record(p.take(time.Now()))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// take reads the live counters.
func (p *statusPage) take(now time.Time) statusSample {
	s := statusSample{at: now, lagMessages: math.NaN(), lagSeconds: math.NaN()}
	if eng := p.parts.eng.Load(); eng != nil {
		tot := eng.Totals()
		s.events, s.predictions, s.hasPipeline = tot.Events, tot.Predictions, true
		p.noteSamples(eng.RecentSamples())
	}
	if eval := p.parts.eval.Load(); eval != nil {
		for _, v := range eval.Stats() {
			s.warms += v.Issued
			s.versions = append(s.versions, versionCounts{v.ModelVersion, v.Issued, v.Used, v.Clicks, v.WarmClicks})
		}
		slices.SortFunc(s.versions, func(a, b versionCounts) int { return strings.Compare(a.version, b.version) })
	}
	if p.gather != nil {
		s.lagMessages, s.lagSeconds = p.lag()
	}
	return s
}

// lag reads the consumer's lag gauges from the registry (NaN when absent).
func (p *statusPage) lag() (messages, seconds float64) {
	messages, seconds = math.NaN(), math.NaN()
	mfs, err := p.gather.Gather()
	if err != nil {
		return messages, seconds
	}
	for _, mf := range mfs {
		if len(mf.GetMetric()) == 0 {
			continue
		}
		switch mf.GetName() {
		case "prefetchd_ingest_lag_messages":
			messages = mf.GetMetric()[0].GetGauge().GetValue()
		case "prefetchd_ingest_lag_seconds":
			seconds = mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return messages, seconds
}

func (p *statusPage) record(s statusSample) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ring[p.next] = s
	p.next++
	if p.next == len(p.ring) {
		p.next, p.full = 0, true
	}
}

// noteSamples makes the recent hints of the engine's latest sampled clicks
// (newest first), each at the time it was sampled.
func (p *statusPage) noteSamples(ss []*engine.Sample) {
	rows := make([]hintRow, 0, min(len(ss), recentHints))
	for _, s := range ss[:min(len(ss), recentHints)] {
		row := hintRow{At: s.At, User: s.UserID, Page: s.Page, ModelVersion: s.ModelVersion, History: s.History}
		for _, h := range s.Hints {
			row.Hints = append(row.Hints, fmt.Sprintf("%s %.2f", h.Page, h.Probability))
		}
		rows = append(rows, row)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hints = rows
}

// samples returns the ring's samples, oldest first.
func (p *statusPage) samples() []statusSample {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.full {
		return append([]statusSample(nil), p.ring[:p.next]...)
	}
	return append(append([]statusSample(nil), p.ring[p.next:]...), p.ring[:p.next]...)
}

// reportView is the offline evaluation shipped with a bundle (report.json,
// written by prefetch-train).
type reportView struct {
	Source string // where it was read
	Report *training.Report
	Err    string // why it could not be read; empty when absent or read
}

// report returns the live version's offline report, read once per version;
// nil when its bundle has none.
func (p *statusPage) report(l *lifecycle.Live) *reportView {
	p.mu.Lock()
	r, ok := p.reports[l.Version]
	p.mu.Unlock()
	if ok {
		return r
	}
	r = p.readReport(l.Version)
	p.mu.Lock()
	p.reports[l.Version] = r
	p.mu.Unlock()
	return r
}

// readReport reads report.json from the bundle folder of version: the
// repository's version folder, --model, or the bundled model.
func (p *statusPage) readReport(version string) *reportView {
	var (
		fsys fs.FS
		name string
		src  string
	)
	switch {
	case p.cfg.ModelRepo != "":
		src = filepath.Join(p.cfg.ModelRepo, p.cfg.ModelName, version, "report.json")
	case p.cfg.Model != "":
		src = filepath.Join(p.cfg.Model, "report.json")
	default:
		var dir string
		fsys, dir = embedded.Model()
		name = path.Join(dir, "report.json")
		src = "bundled model"
	}
	var (
		f   io.ReadCloser
		err error
	)
	if fsys != nil {
		f, err = fsys.Open(name)
	} else {
		f, err = os.Open(src)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	v := &reportView{Source: src}
	if err != nil {
		v.Err = err.Error()
		return v
	}
	defer f.Close()
	var rep training.Report
	if err := json.NewDecoder(io.LimitReader(f, maxReportBytes)).Decode(&rep); err != nil {
		v.Err = fmt.Sprintf("decode: %v", err)
		return v
	}
	v.Report = &rep
	return v
}

// modelView is the active model's part of the page.
type modelView struct {
	Version, Name, Kind string
	Vocab, MaxSeqLen    int
	Activated           time.Time
	Report              *reportView
}

// liveView holds the latest rates and ratios.
type liveView struct {
	EventsPerSec, PredictionsPerSec, WarmsPerSec float64
	LagMessages, LagSeconds                      string
	Versions                                     []versionLine
}

// versionLine is one model version's totals since the start.
type versionLine struct {
	Version             string
	Issued, Used        uint64
	Clicks, WarmClicks  uint64
	Precision, Coverage float64
}

// statusView is everything the template shows.
type statusView struct {
	Now      time.Time
	Refresh  int
	Ready    bool
	Reasons  []string
	Model    *modelView
	Waiting  string // why there is no model yet
	Pipeline bool
	Live     liveView
	Charts   []template.HTML
	Hints    []hintRow
	Samples  int
	Every    time.Duration
}

// view builds the page's content from the ring and the live parts.
func (p *statusPage) view(now time.Time) statusView {
	v := statusView{Now: now, Refresh: statusRefresh, Every: statusEvery}
	if st := p.ready.last.Load(); st == nil {
		v.Reasons = []string{"starting: first checks not run yet"}
	} else {
		v.Ready, v.Reasons = st.ok(), st.failures
	}
	if m := p.parts.models.Load(); m != nil {
		if l := m.Current(); l != nil {
			mv := &modelView{Version: l.Version, Activated: l.ActivatedAt, Report: p.report(l)}
			if l.Manifest != nil {
				mv.Name, mv.Kind, mv.MaxSeqLen = l.Manifest.Name, l.Manifest.Cell, l.Manifest.MaxSeqLen
			}
			if l.Vocab != nil {
				mv.Vocab = l.Vocab.Len()
			}
			v.Model = mv
		} else if err := m.Waiting(); err != nil {
			v.Waiting = err.Error()
		}
	}
	ss := p.samples()
	v.Samples = len(ss)
	p.mu.Lock()
	v.Hints = append([]hintRow(nil), p.hints...)
	p.mu.Unlock()
	if len(ss) > 0 {
		last := ss[len(ss)-1]
		v.Pipeline = last.hasPipeline
		v.Live.LagMessages, v.Live.LagSeconds = gaugeText(last.lagMessages, "%.0f"), gaugeText(last.lagSeconds, "%.1f s")
		for _, c := range last.versions {
			line := versionLine{Version: c.version, Issued: c.issued, Used: c.used, Clicks: c.clicks, WarmClicks: c.hot}
			if c.issued > 0 {
				line.Precision = float64(c.used) / float64(c.issued)
			}
			if c.clicks > 0 {
				line.Coverage = float64(c.hot) / float64(c.clicks)
			}
			v.Live.Versions = append(v.Live.Versions, line)
		}
	}
	if len(ss) > 1 {
		a, b := ss[len(ss)-2], ss[len(ss)-1]
		dt := b.at.Sub(a.at).Seconds()
		v.Live.EventsPerSec = perSec(a.events, b.events, dt)
		v.Live.PredictionsPerSec = perSec(a.predictions, b.predictions, dt)
		v.Live.WarmsPerSec = perSec(a.warms, b.warms, dt)
	}
	v.Charts = charts(ss)
	return v
}

func gaugeText(v float64, format string) string {
	if math.IsNaN(v) {
		return "unknown"
	}
	return fmt.Sprintf(format, v)
}

func perSec(a, b uint64, dt float64) float64 {
	if dt <= 0 || b < a {
		return 0
	}
	return float64(b-a) / dt
}

// ServeHTTP renders the page.
func (p *statusPage) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	var buf bytes.Buffer
	if err := statusTmpl.Execute(&buf, p.view(time.Now())); err != nil {
		http.Error(w, "render status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}

// versionNames lists the versions seen in ss in order of first appearance.
func versionNames(ss []statusSample) []string {
	var names []string
	seen := map[string]bool{}
	for _, s := range ss {
		for _, c := range s.versions {
			if !seen[c.version] {
				seen[c.version] = true
				names = append(names, c.version)
			}
		}
	}
	return names
}

func countsOf(s statusSample, version string) (versionCounts, bool) {
	for _, c := range s.versions {
		if c.version == version {
			return c, true
		}
	}
	return versionCounts{}, false
}

// charts draws the page's charts from the samples, oldest first.
func charts(ss []statusSample) []template.HTML {
	list := chartData(ss)
	out := make([]template.HTML, 0, len(list))
	for _, c := range list {
		out = append(out, c.svg())
	}
	return out
}

// chartData computes the charts' series from the samples, oldest first.
func chartData(ss []statusSample) []chart {
	rates := func(get func(statusSample) uint64) []point {
		var pts []point
		for i := 1; i < len(ss); i++ {
			dt := ss[i].at.Sub(ss[i-1].at).Seconds()
			pts = append(pts, point{ss[i].at, perSec(get(ss[i-1]), get(ss[i]), dt)})
		}
		return pts
	}
	gauge := func(get func(statusSample) float64) []point {
		pts := make([]point, 0, len(ss))
		for _, s := range ss {
			pts = append(pts, point{s.at, get(s)})
		}
		return pts
	}
	// ratio is num/den of a version over the trailing ratioWindow; NaN
	// where nothing was counted (a gap in the line).
	ratio := func(version string, num, den func(versionCounts) uint64) []point {
		var pts []point
		j := 0
		for i := 1; i < len(ss); i++ {
			for j < i-1 && ss[i].at.Sub(ss[j].at) > ratioWindow {
				j++
			}
			b, okB := countsOf(ss[i], version)
			a, _ := countsOf(ss[j], version)
			v := math.NaN()
			if okB && den(b) > den(a) {
				v = float64(num(b)-num(a)) / float64(den(b)-den(a))
			}
			pts = append(pts, point{ss[i].at, v})
		}
		return pts
	}
	versions := versionNames(ss)
	perVersion := func(num, den func(versionCounts) uint64) []series {
		out := make([]series, 0, len(versions))
		for k, name := range versions {
			out = append(out, series{Name: name, Color: palette[(k+3)%len(palette)], Points: ratio(name, num, den)})
		}
		return out
	}
	return []chart{
		{ID: "throughput", Title: "Throughput", Unit: "per second", Series: []series{
			{Name: "events", Color: palette[0], Points: rates(func(s statusSample) uint64 { return s.events })},
			{Name: "predictions", Color: palette[1], Dashed: true, Points: rates(func(s statusSample) uint64 { return s.predictions })},
			{Name: "warms", Color: palette[2], Points: rates(func(s statusSample) uint64 { return s.warms })},
		}},
		{ID: "precision", Title: "Precision by model version (used / issued, trailing minute)", Unit: "ratio", Max: 1,
			Series: perVersion(func(c versionCounts) uint64 { return c.used }, func(c versionCounts) uint64 { return c.issued })},
		{ID: "coverage", Title: "Coverage by model version (warm clicks / clicks, trailing minute)", Unit: "ratio", Max: 1,
			Series: perVersion(func(c versionCounts) uint64 { return c.hot }, func(c versionCounts) uint64 { return c.clicks })},
		{ID: "lag-messages", Title: "Consumer lag", Unit: "messages", Series: []series{
			{Name: "messages", Color: palette[0], Points: gauge(func(s statusSample) float64 { return s.lagMessages })},
		}},
		{ID: "lag-seconds", Title: "Oldest unsettled record", Unit: "seconds", Series: []series{
			{Name: "seconds", Color: palette[1], Points: gauge(func(s statusSample) float64 { return s.lagSeconds })},
		}},
	}
}

// palette colours the series; each is a plain sRGB value so a screenshot
// can find its pixels.
var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"}

type point struct {
	t time.Time
	v float64 // NaN: no value (a gap)
}

type series struct {
	Name, Color string
	Dashed      bool // drawn dashed, for a line that often lies on another
	Points      []point
}

// chart is one SVG line chart; Max 0 scales to the data.
type chart struct {
	ID, Title, Unit string
	Max             float64
	Series          []series
}

// Chart geometry, in SVG user units.
const (
	chartW, chartH         = 560.0, 200.0
	padL, padR, padT, padB = 56.0, 12.0, 28.0, 40.0
	legendRow              = 14.0 // height of each further legend row
)

// svg draws the chart. Every text from outside (series names are model
// versions) is escaped.
func (c chart) svg() template.HTML {
	var t0, t1 time.Time
	ymax := c.Max
	for _, s := range c.Series {
		for _, p := range s.Points {
			if t0.IsZero() || p.t.Before(t0) {
				t0 = p.t
			}
			if p.t.After(t1) {
				t1 = p.t
			}
			if c.Max == 0 && !math.IsNaN(p.v) && p.v > ymax {
				ymax = p.v
			}
		}
	}
	if ymax <= 0 {
		ymax = 1
	}
	if c.Max == 0 {
		ymax = niceCeil(ymax)
	}
	span := t1.Sub(t0)
	plotW, plotH := chartW-padL-padR, chartH-padT-padB
	x := func(t time.Time) float64 {
		if span <= 0 {
			return padL + plotW
		}
		return padL + plotW*float64(t.Sub(t0))/float64(span)
	}
	y := func(v float64) float64 { return padT + plotH*(1-math.Min(v, ymax)/ymax) }

	// The legend wraps onto further rows of legendRow px below the chart
	// when its entries do not fit on one.
	type entry struct{ x, y float64 }
	legend := make([]entry, len(c.Series))
	lx, rows := padL, 0
	for i, s := range c.Series {
		w := 24 + 7*float64(len([]rune(s.Name)))
		if lx > padL && lx+w > chartW-4 {
			lx, rows = padL, rows+1
		}
		legend[i] = entry{lx, float64(rows) * legendRow}
		lx += w
	}
	height := chartH + float64(rows)*legendRow

	var b strings.Builder
	esc := template.HTMLEscapeString
	fmt.Fprintf(&b, `<svg class="chart" id="chart-%s" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f" role="img" aria-label="%s">`,
		esc(c.ID), chartW, height, chartW, height, esc(c.Title))
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%.0f" height="%.0f" fill="#ffffff"/>`, chartW, height)
	fmt.Fprintf(&b, `<text x="%.0f" y="16" font-size="13" font-weight="bold" fill="#222">%s</text>`, padL, esc(c.Title))
	for _, f := range []float64{0, 0.5, 1} {
		yy := y(f * ymax)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#dddddd" stroke-width="1"/>`, padL, yy, padL+plotW, yy)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10" text-anchor="end" fill="#555">%s</text>`, padL-4, yy+3, esc(axisLabel(f*ymax, c.Unit)))
	}
	fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#999999" stroke-width="1"/>`, padL, padT, plotW, plotH)
	if !t0.IsZero() {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10" fill="#555">%s</text>`, padL, padT+plotH+12, t0.UTC().Format("15:04:05"))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10" text-anchor="end" fill="#555">%s UTC (%s)</text>`,
			padL+plotW, padT+plotH+12, t1.UTC().Format("15:04:05"), esc(span.Round(time.Second).String()))
	} else {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" text-anchor="middle" fill="#777">no samples yet</text>`, padL+plotW/2, padT+plotH/2)
	}
	for i, s := range c.Series {
		for _, run := range runs(s.Points) {
			if len(run) == 1 {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`, x(run[0].t), y(run[0].v), s.Color)
				continue
			}
			b.WriteString(`<polyline fill="none" stroke-width="2" stroke-linejoin="round" stroke="` + s.Color + `"`)
			if s.Dashed {
				b.WriteString(` stroke-dasharray="8 6"`)
			}
			b.WriteString(` points="`)
			for i, p := range run {
				if i > 0 {
					b.WriteByte(' ')
				}
				fmt.Fprintf(&b, "%.1f,%.1f", x(p.t), y(p.v))
			}
			b.WriteString(`"/>`)
		}
		e := legend[i]
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="10" height="10" fill="%s"/>`, e.x, chartH-14+e.y, s.Color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" fill="#222">%s</text>`, e.x+14, chartH-5+e.y, esc(s.Name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // built here, every outside text escaped above
}

// runs splits points at NaN values into runs of defined values.
func runs(pts []point) [][]point {
	var out [][]point
	var cur []point
	for _, p := range pts {
		if math.IsNaN(p.v) || math.IsInf(p.v, 0) {
			if len(cur) > 0 {
				out = append(out, cur)
			}
			cur = nil
			continue
		}
		cur = append(cur, p)
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*e {
			return m * e
		}
	}
	return 10 * e
}

func axisLabel(v float64, unit string) string {
	if unit == "ratio" {
		return fmt.Sprintf("%.0f%%", 100*v)
	}
	if v >= 10_000 {
		return fmt.Sprintf("%.0fk", v/1000)
	}
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2g", v)
}
