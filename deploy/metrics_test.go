package deploy

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/prefetchd/prefetchd/internal/app"
)

// notYetInitialized are metrics the rules or the dashboard read that their
// package does not yet create at zero, with what has to change. The tests
// fail once one appears, so the list cannot outlive the gap.
var notYetInitialized = map[string]string{}

// notYetExported are metrics the dashboard already charts that prefetchd
// does not export yet, with why. As with notYetInitialized, the test fails
// once one appears in the first scrape.
var notYetExported = map[string]string{}

// firstScrape starts prefetchd on embedded defaults, without replay, and
// returns its first /metrics scrape.
func firstScrape(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := app.Default()
	cfg.Listen, cfg.AdminListen, cfg.Replay = "127.0.0.1:0", "127.0.0.1:0", app.ReplayNone
	runCtx, stop := context.WithCancel(ctx)
	ready, done := make(chan app.Addrs, 1), make(chan error, 1)
	go func() {
		done <- app.RunWith(runCtx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), app.Options{Ready: func(a app.Addrs) { ready <- a }})
	}()
	var addrs app.Addrs
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("service stopped: %v", err)
	case <-ctx.Done():
		t.Fatal("service did not start")
	}
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addrs.Admin+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(body)
}

// Series selectors in PromQL: a name with optional {matchers}; of the
// matchers, the equalities (label="value") name label sets that must exist.
var (
	selectorRE = regexp.MustCompile(`(prefetchd_[a-z_]+)(\{([^}]*)\})?`)
	matcherRE  = regexp.MustCompile(`([a-z_]+)\s*(=~|!=|!~|=)\s*"([^"]*)"`)
)

// baseName strips a histogram's series suffix.
func baseName(name string) string {
	for _, suf := range []string{"_bucket", "_count", "_sum"} {
		if b, ok := strings.CutSuffix(name, suf); ok {
			return b
		}
	}
	return name
}

// checkSeries checks that every series the expressions select is in the
// scrape, label equalities included: a rule or a panel on a series that
// appears only after the first incident cannot fire, or shows nothing.
func checkSeries(t *testing.T, exprs, scrape string) {
	t.Helper()
	seen := map[string]bool{}
	for _, m := range selectorRE.FindAllStringSubmatch(exprs, -1) {
		name := m[1]
		var want []string // label="value" pairs
		for _, lm := range matcherRE.FindAllStringSubmatch(m[3], -1) {
			if lm[2] == "=" {
				want = append(want, lm[1]+`="`+lm[3]+`"`)
			}
		}
		key := name
		if len(want) > 0 {
			key += "{" + strings.Join(want, ",") + "}"
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		t.Run(key, func(t *testing.T) {
			base := baseName(name)
			for _, list := range []map[string]string{notYetInitialized, notYetExported} {
				if why, ok := list[base]; ok {
					if strings.Contains(scrape, "\n"+base) {
						t.Fatalf("%s is in the first scrape now; remove it from its list", base)
					}
					t.Logf("%s not in the first scrape: %s", base, why)
					return
				}
			}
		lines:
			for _, line := range strings.Split(scrape, "\n") {
				if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
					continue
				}
				for _, w := range want {
					if !strings.Contains(line, w) {
						continue lines
					}
				}
				return
			}
			t.Errorf("%s is not in the first scrape", key)
		})
	}
	if len(seen) < 5 {
		t.Fatalf("found only %d metrics in the expressions; the pattern is wrong", len(seen))
	}
}

// TestRuleMetricsExist checks that every series the alert rules read is in
// prefetchd's first /metrics scrape.
func TestRuleMetricsExist(t *testing.T) {
	rules, err := os.ReadFile("prometheus/rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Rules []struct {
				Expr string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(rules, &file); err != nil {
		t.Fatal(err)
	}
	var exprs strings.Builder
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			exprs.WriteString(r.Expr + "\n")
		}
	}
	checkSeries(t, exprs.String(), firstScrape(t))
}

var dashboardRules = flag.String("dashboard-rules", "",
	"write the dashboard's queries to this file as Prometheus recording rules, for `promtool check rules` (make lint-ops)")

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	UID, Title    string
	SchemaVersion int `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name, Type string
		}
	}
	Annotations struct {
		List []struct {
			Expr string
		}
	}
	Panels []struct {
		ID         int
		Type       string
		Title      string
		Datasource *struct{ UID string }
		GridPos    struct{ X, Y, W, H int } `json:"gridPos"`
		Targets    []struct {
			RefID string `json:"refId"`
			Expr  string
		}
	}
}

// TestDashboard parses the Grafana dashboard, checks its shape (unique
// panel ids, a query per panel on the chosen data source, the panels the
// operators need) and that every series its queries read is in prefetchd's
// first /metrics scrape.
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile("grafana/prefetchd.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("parse dashboard: %v", err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("uid %q, title %q, schemaVersion %d: want both set and a schema of Grafana 9 or later", d.UID, d.Title, d.SchemaVersion)
	}
	types := map[string]string{}
	for _, v := range d.Templating.List {
		types[v.Name] = v.Type
	}
	if types["datasource"] != "datasource" || types["instance"] != "query" {
		t.Errorf("template variables %v, want datasource (datasource) and instance (query)", types)
	}
	var exprs strings.Builder
	ids := map[int]bool{}
	titles := map[string]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		titles[p.Title] = true
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: grid position %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		for _, tg := range p.Targets {
			if !strings.Contains(tg.Expr, "prefetchd_") {
				t.Errorf("panel %q query %s reads no prefetchd metric: %q", p.Title, tg.RefID, tg.Expr)
			}
			if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %q query %s ignores the instance variable: %q", p.Title, tg.RefID, tg.Expr)
			}
			// Every replica reports the whole group's lag in messages:
			// summed over replicas it would count each partition once per
			// replica.
			if strings.Contains(tg.Expr, "sum(prefetchd_ingest_lag_messages") {
				t.Errorf("panel %q query %s sums the group's lag over replicas: %q", p.Title, tg.RefID, tg.Expr)
			}
			exprs.WriteString(tg.Expr + "\n")
		}
	}
	for _, a := range d.Annotations.List {
		exprs.WriteString(a.Expr + "\n")
	}
	for _, want := range []string{"Throughput", "Consumer lag (messages)", "Consumer lag (seconds)", "Click to warm latency",
		"Precision by model version", "Coverage by model version", "Redis errors", "Kafka errors", "Model swaps"} {
		if !titles[want] {
			t.Errorf("no panel %q", want)
		}
	}
	// Grafana's variables are not PromQL: give them values a query can take.
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$instance", ".*")
	queries := vars.Replace(exprs.String())
	if *dashboardRules != "" {
		writeRecordingRules(t, *dashboardRules, strings.Split(strings.TrimSpace(queries), "\n"))
	}
	checkSeries(t, queries, firstScrape(t))
}

// writeRecordingRules writes exprs as one group of recording rules, so that
// promtool can check that each is valid PromQL.
func writeRecordingRules(t *testing.T, path string, exprs []string) {
	t.Helper()
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	rules := make([]rule, 0, len(exprs))
	for i, e := range exprs {
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query_%d", i+1), Expr: e})
	}
	out, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}
