package features

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCanonical(t *testing.T) {
	cfg := CanonicalizerConfig{
		QueryAllow: []string{"id", "lang"},
		Rules: []RewriteRule{
			{Pattern: `^/product/\d+$`, Replacement: "/product/:id"},
			{Pattern: `^/users/([^/]+)/orders/\d+$`, Replacement: "/users/$1/orders/:n"},
			// A rewrite to nothing (a replacement left out) is skipped.
			{Pattern: `^/legacy/\d+$`},
		},
	}
	hostCfg := cfg
	hostCfg.KeepHost = true
	cases := []struct {
		name, in, want, wantHost string
	}{
		{name: "canonical", in: "/a/b", want: "/a/b"},
		{name: "root", in: "/", want: "/"},
		{name: "empty", in: "", want: "/"},
		{name: "relative", in: "a/b", want: "/a/b"},
		{name: "trailing slashes", in: "/a/b//", want: "/a/b"},
		{name: "double slashes", in: "//x.org//a///b", want: "/a/b", wantHost: "x.org/a/b"},
		{name: "fragment", in: "/a#top", want: "/a"},
		{name: "query dropped", in: "/a?utm=1&b=2", want: "/a"},
		{name: "query kept sorted", in: "/a?lang=en&utm=x&id=7&id=3", want: "/a?id=7&id=3&lang=en"},
		{name: "query escaped", in: "/a?id=a%20b", want: "/a?id=a+b"},
		{name: "url", in: "https://User@Example.COM:443/Shop/?id=1#x", want: "/Shop?id=1", wantHost: "example.com/Shop?id=1"},
		{name: "url no path", in: "http://example.com", want: "/", wantHost: "example.com/"},
		{name: "rule", in: "https://shop.example/product/123/", want: "/product/:id", wantHost: "shop.example/product/:id"},
		{name: "rule no match", in: "/product/12a", want: "/product/12a"},
		{name: "rule group", in: "/users/ann/orders/9", want: "/users/ann/orders/:n"},
		{name: "rule to nothing", in: "/legacy/42", want: "/legacy/42"},
		{name: "spaces", in: "  /a  ", want: "/a"},
		{name: "colon in path", in: "/a:b://c", want: "/a:b:/c"},
	}
	c, err := NewCanonicalizer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := NewCanonicalizer(hostCfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := c.Canonical(tc.in); got != tc.want {
				t.Errorf("Canonical(%q) = %q, want %q", tc.in, got, tc.want)
			}
			wantHost := tc.wantHost
			if wantHost == "" {
				wantHost = tc.want
			}
			if got := ch.Canonical(tc.in); got != wantHost {
				t.Errorf("KeepHost Canonical(%q) = %q, want %q", tc.in, got, wantHost)
			}
			// Canonical is idempotent.
			if got := c.Canonical(c.Canonical(tc.in)); got != tc.want {
				t.Errorf("Canonical twice (%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestCanonicalizerConfigValidate(t *testing.T) {
	for _, rules := range [][]RewriteRule{{{Pattern: "("}}, {{Pattern: ""}}} {
		cfg := CanonicalizerConfig{Rules: rules}
		if err := cfg.Validate(); err == nil {
			t.Errorf("rules %+v accepted", rules)
		}
		if _, err := NewCanonicalizer(cfg); err == nil {
			t.Errorf("NewCanonicalizer accepted rules %+v", rules)
		}
	}
}

type mapVocab map[string]int64

func (v mapVocab) Index(p string) int64 {
	if i, ok := v[p]; ok {
		return i
	}
	return 1
}

func TestCanonicalIndex(t *testing.T) {
	c, _ := NewCanonicalizer(CanonicalizerConfig{})
	v := mapVocab{"/a": 2, "/b": 3}
	for in, want := range map[string]int32{"/a/": 2, "http://h/b?x=1": 3, "/zzz": 1} {
		if got := c.Index(v, in); got != want {
			t.Errorf("Index(%q) = %d, want %d", in, got, want)
		}
	}
}

func ExampleCanonicalizer() {
	c, err := NewCanonicalizer(CanonicalizerConfig{
		QueryAllow: []string{"lang"},
		Rules:      []RewriteRule{{Pattern: `^/product/\d+$`, Replacement: "/product/:id"}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.Canonical("https://shop.example/product/42/?utm_source=x&lang=de#reviews"))
	// Output: /product/:id?lang=de
}

func BenchmarkCanonical(b *testing.B) {
	c, _ := NewCanonicalizer(CanonicalizerConfig{})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = c.Canonical("/page/1234")
		}
	})
	b.Run("url", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = c.Canonical("https://example.com/page/1234/?utm=1")
		}
	})
}

func FuzzCanonical(f *testing.F) {
	for _, s := range []string{"/a/b/", "https://x.org//a?id=1&b=2#f", "//h/p", "a", "", "/product/12", "?id=%zz", "http://u@H:80"} {
		f.Add(s)
	}
	c, err := NewCanonicalizer(CanonicalizerConfig{
		QueryAllow: []string{"id"},
		Rules:      []RewriteRule{{Pattern: `^/product/\d+$`, Replacement: "/product/:id"}},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, page string) {
		got := c.Canonical(page)
		if got == "" || got[0] != '/' {
			t.Fatalf("Canonical(%q) = %q, want a path starting with /", page, got)
		}
		if again := c.Canonical(got); again != got {
			t.Fatalf("Canonical is not idempotent: %q -> %q -> %q", page, got, again)
		}
	})
}

// TestReadCanonicalizerConfig: one JSON object of known fields is read;
// unknown fields, anything after the object, and anything but an object are
// refused.
func TestReadCanonicalizerConfig(t *testing.T) {
	for _, tc := range []struct {
		name, content, wantErr string
	}{
		{"object", `{"keep_host": true}`, ""},
		{"object and spaces", "\n {\"keep_host\": true} \n", ""},
		{"unknown field", `{"query_alow": ["id"]}`, `unknown field "query_alow"`},
		{"a second object", `{"keep_host": true} {"x": 1}`, "content after the object"},
		{"trailing text", `{"keep_host": true} junk`, "content after the object"},
		{"null", `null`, "want a JSON object"},
		{"empty", ``, "want a JSON object"},
		{"array", `[]`, "want a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "canonical.json")
			if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := ReadCanonicalizerConfig(path)
			if tc.wantErr == "" {
				if err != nil || !cfg.KeepHost {
					t.Fatalf("ReadCanonicalizerConfig = %+v, %v; want keep_host read", cfg, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("ReadCanonicalizerConfig error %v, want %q", err, tc.wantErr)
			}
		})
	}
}
