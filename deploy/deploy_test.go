// Package deploy holds the operations files (Dockerfile, Kubernetes
// manifests, Prometheus rules); its tests check them against the service.
package deploy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/prefetchd/prefetchd/internal/app"
)

// object is one parsed Kubernetes resource.
type object map[string]any

// get follows keys (strings for maps, ints for lists) and returns what is
// there, or nil.
func (o object) get(path ...any) any {
	var cur any = map[string]any(o)
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := cur.(map[string]any)
			if !ok {
				return nil
			}
			cur = m[k]
		case int:
			l, ok := cur.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			cur = l[k]
		}
	}
	return cur
}

func (o object) str(path ...any) string { s, _ := o.get(path...).(string); return s }

// render reads the kustomization's resources, keyed by kind.
func render(t *testing.T) map[string]object {
	t.Helper()
	var k struct {
		Resources []string `yaml:"resources"`
	}
	readYAML(t, filepath.Join("k8s", "kustomization.yaml"), &k)
	out := map[string]object{}
	for _, r := range k.Resources {
		f, err := os.Open(filepath.Join("k8s", r))
		if err != nil {
			t.Fatalf("kustomization resource: %v", err)
		}
		dec := yaml.NewDecoder(f)
		for {
			var m map[string]any // not object: nested maps would decode as object too
			err := dec.Decode(&m)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", r, err)
			}
			o := object(m)
			kind := o.str("kind")
			if _, dup := out[kind]; dup {
				t.Fatalf("%s: a second %s", r, kind)
			}
			out[kind] = o
		}
		f.Close()
	}
	return out
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestManifests checks the Kubernetes manifests against each other and the
// service: the ConfigMap is a configuration prefetchd accepts (with shared
// histories), probes hit the admin port's health endpoints, selectors and
// port names match.
func TestManifests(t *testing.T) {
	objs := render(t)
	for _, kind := range []string{"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} {
		if objs[kind] == nil {
			t.Fatalf("no %s in the kustomization (have %v)", kind, keys(objs))
		}
	}
	dep, cm := objs["Deployment"], objs["ConfigMap"]
	pod := object(asMap(dep.get("spec", "template")))
	ctr := object(asMap(pod.get("spec", "containers", 0)))
	ports := map[string]int{}
	for _, p := range asList(ctr.get("ports")) {
		po := object(asMap(p))
		ports[po.str("name")] = asInt(po.get("containerPort"))
	}
	labels := asMap(pod.get("metadata", "labels"))
	selects := func(sel any) bool {
		m := asMap(sel)
		if len(m) == 0 {
			return false
		}
		for k, v := range m {
			if labels[k] != v {
				return false
			}
		}
		return true
	}

	var cfg app.Config
	t.Run("configmap is a valid configuration", func(t *testing.T) {
		var environ []string
		for k, v := range asMap(cm.get("data")) {
			environ = append(environ, fmt.Sprintf("%s=%v", k, v))
		}
		var err error
		if cfg, err = app.ParseFlags(nil, environ, io.Discard); err != nil {
			t.Fatalf("prefetchd refuses the ConfigMap: %v", err)
		}
		if cfg.HistoryStore != "redis" || cfg.Embedded() || cfg.RedisAddr == "" {
			t.Errorf("replicas must share histories in a real Redis and read a real Kafka: history store %q, brokers %v, redis %q",
				cfg.HistoryStore, cfg.KafkaBrokers, cfg.RedisAddr)
		}
		for name, addr := range map[string]string{"grpc": cfg.Listen, "admin": cfg.AdminListen} {
			host, port, _ := net.SplitHostPort(addr)
			if host == "127.0.0.1" || host == "localhost" || port != fmt.Sprint(ports[name]) {
				t.Errorf("%s listens on %s, want all interfaces on the container port %d", name, addr, ports[name])
			}
		}
	})
	t.Run("deployment reads the configmap", func(t *testing.T) {
		if got := ctr.str("envFrom", 0, "configMapRef", "name"); got != cm.str("metadata", "name") {
			t.Errorf("envFrom configMapRef %q, want %q", got, cm.str("metadata", "name"))
		}
		if !selects(dep.get("spec", "selector", "matchLabels")) {
			t.Errorf("Deployment selector %v does not select its pods %v", dep.get("spec", "selector"), labels)
		}
	})
	probes := []struct{ probe, path string }{
		{"startupProbe", "/healthz"}, {"livenessProbe", "/healthz"}, {"readinessProbe", "/readyz"},
	}
	for _, p := range probes {
		t.Run(p.probe, func(t *testing.T) {
			if got := ctr.str(p.probe, "httpGet", "path"); got != p.path {
				t.Errorf("%s path %q, want %q", p.probe, got, p.path)
			}
			if port := ctr.str(p.probe, "httpGet", "port"); ports[port] == 0 || port != "admin" {
				t.Errorf("%s port %q, want the admin port", p.probe, port)
			}
		})
	}
	t.Run("non-root", func(t *testing.T) {
		if pod.get("spec", "securityContext", "runAsNonRoot") != true || asInt(pod.get("spec", "securityContext", "runAsUser")) == 0 {
			t.Errorf("pod securityContext %v, want runAsNonRoot and a non-zero runAsUser", pod.get("spec", "securityContext"))
		}
	})
	t.Run("service", func(t *testing.T) {
		svc := objs["Service"]
		if !selects(svc.get("spec", "selector")) {
			t.Errorf("Service selector %v does not select the pods %v", svc.get("spec", "selector"), labels)
		}
		for _, p := range asList(svc.get("spec", "ports")) {
			if tp := object(asMap(p)).str("targetPort"); ports[tp] == 0 {
				t.Errorf("Service targetPort %q is no container port (have %v)", tp, ports)
			}
		}
	})
	t.Run("pod disruption budget", func(t *testing.T) {
		pdb := objs["PodDisruptionBudget"]
		if !selects(pdb.get("spec", "selector", "matchLabels")) {
			t.Errorf("PDB selector does not select the pods")
		}
		if min := asInt(pdb.get("spec", "minAvailable")); min < 1 || min >= asInt(dep.get("spec", "replicas")) {
			t.Errorf("PDB minAvailable %d, want at least 1 and below the %v replicas", min, dep.get("spec", "replicas"))
		}
	})
	t.Run("autoscaler", func(t *testing.T) {
		hpa := objs["HorizontalPodAutoscaler"]
		if hpa.str("spec", "scaleTargetRef", "kind") != "Deployment" || hpa.str("spec", "scaleTargetRef", "name") != dep.str("metadata", "name") {
			t.Errorf("HPA targets %v, want the Deployment", hpa.get("spec", "scaleTargetRef"))
		}
		if ctr.get("resources", "requests", "cpu") == nil {
			t.Error("CPU utilization scaling needs a CPU request on the container")
		}
		if minR := asInt(hpa.get("spec", "minReplicas")); minR <= asInt(objs["PodDisruptionBudget"].get("spec", "minAvailable")) {
			t.Errorf("HPA minReplicas %d leaves the PDB no pod to evict", minR)
		}
	})
}

// TestDockerfile checks the image recipe: multi-stage, the Go version of
// go.mod, a static build, a non-root user, a health check, and listen
// addresses prefetchd accepts.
func TestDockerfile(t *testing.T) {
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var froms, env []string
	var user, health, build string
	sc := bufio.NewScanner(f)
	logical := ""
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			logical += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line, logical = logical+line, ""
		instr, rest, _ := strings.Cut(line, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			froms = append(froms, rest)
			user, env = "", nil // per stage
		case "USER":
			user = rest
		case "HEALTHCHECK":
			health = rest
		case "ENV":
			env = append(env, strings.Fields(rest)...)
		case "RUN":
			if strings.Contains(rest, "go build") {
				build = rest
			}
		}
	}
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	checks := []struct {
		name string
		ok   bool
		got  any
	}{
		{"multi-stage", len(froms) >= 2, froms},
		{"builder uses go.mod's Go", len(goVersion) == 2 && len(froms) > 0 && strings.Contains(froms[0], "golang:"+string(goVersion[1])), froms},
		{"static binary", strings.Contains(build, "CGO_ENABLED=0"), build},
		{"non-root user in the final stage", user != "" && !slices.Contains([]string{"0", "root", "0:0"}, user), user},
		{"health check runs prefetchctl health", strings.Contains(health, "prefetchctl") && strings.Contains(health, `"health"`), health},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if !c.ok {
				t.Errorf("got %v", c.got)
			}
		})
	}
	t.Run("environment accepted by prefetchd", func(t *testing.T) {
		cfg, err := app.ParseFlags(nil, env, io.Discard)
		if err != nil {
			t.Fatalf("prefetchd refuses the image's ENV %v: %v", env, err)
		}
		if host, _, _ := net.SplitHostPort(cfg.AdminListen); host != "0.0.0.0" {
			t.Errorf("admin listens on %s in the container, want all interfaces", cfg.AdminListen)
		}
	})
}

func asMap(v any) map[string]any { m, _ := v.(map[string]any); return m }
func asList(v any) []any         { l, _ := v.([]any); return l }
func asInt(v any) int            { i, _ := v.(int); return i }

func keys(m map[string]object) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
