package features

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
)

// RewriteRule rewrites a canonical path: every match of Pattern (Go regexp
// syntax) is replaced by Replacement, which may refer to groups as $1 or ${name}.
type RewriteRule struct {
	Pattern     string `json:"pattern"`
	Replacement string `json:"replacement"`
}

// CanonicalizerConfig says how page keys are normalized. The zero value drops
// scheme, host, query and fragment and trailing slashes, and rewrites nothing.
type CanonicalizerConfig struct {
	// KeepHost keeps the host (lower case, default port and user info dropped)
	// as a prefix of the key: "example.com/a". Scheme is always dropped.
	KeepHost bool `json:"keep_host,omitempty"`
	// QueryAllow lists query parameters that are kept; their pairs are sorted by
	// name. All other parameters are dropped.
	QueryAllow []string `json:"query_allow,omitempty"`
	// Rules are applied in order to the path (without host and query), each
	// to the output of the previous one, e.g. `^/product/\d+$` -> `/product/:id`.
	// A rule whose result would be empty leaves the path as it was.
	Rules []RewriteRule `json:"rules,omitempty"`
}

// ReadCanonicalizerConfig reads a CanonicalizerConfig from the JSON file at
// path, strictly: a field the config does not have (a misspelt
// "query_alow") is an error, not ignored, and so is a file holding no JSON
// object. It does not validate the rules (NewCanonicalizer does). It is the
// one loader of --canonical-config files, so that the service and the
// trainer accept and refuse the same files.
func ReadCanonicalizerConfig(path string) (CanonicalizerConfig, error) {
	var cfg CanonicalizerConfig
	b, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("read canonicalization config: %w", err)
	}
	if t := bytes.TrimSpace(b); len(t) == 0 || t[0] != '{' {
		return CanonicalizerConfig{}, fmt.Errorf("canonicalization config %s: want a JSON object", path)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return CanonicalizerConfig{}, fmt.Errorf("canonicalization config %s: %w", path, err)
	}
	// One object, nothing after it: a second one (a file appended to,
	// two merged) would be ignored silently.
	if _, err := dec.Token(); err != io.EOF {
		return CanonicalizerConfig{}, fmt.Errorf("canonicalization config %s: content after the object", path)
	}
	return cfg, nil
}

// Validate compiles the rules and reports the first bad one.
func (c CanonicalizerConfig) Validate() error {
	_, err := compileRules(c.Rules)
	return err
}

type compiledRule struct {
	re   *regexp.Regexp
	repl string
}

func compileRules(rules []RewriteRule) ([]compiledRule, error) {
	out := make([]compiledRule, 0, len(rules))
	for i, r := range rules {
		if r.Pattern == "" {
			return nil, fmt.Errorf("canonical rule %d: empty pattern", i)
		}
		re, err := regexp.Compile(r.Pattern)
		if err != nil {
			return nil, fmt.Errorf("canonical rule %d %q: %w", i, r.Pattern, err)
		}
		out = append(out, compiledRule{re: re, repl: r.Replacement})
	}
	return out, nil
}

// Canonicalizer maps raw pages (URLs or paths) to the keys used in the model
// vocabulary. The trainer and the service must use the same configuration so
// that the same click lands on the same index. It is immutable and safe for
// concurrent use.
type Canonicalizer struct {
	keepHost bool
	allow    map[string]bool
	rules    []compiledRule
}

// NewCanonicalizer validates cfg and builds a Canonicalizer.
func NewCanonicalizer(cfg CanonicalizerConfig) (*Canonicalizer, error) {
	rules, err := compileRules(cfg.Rules)
	if err != nil {
		return nil, err
	}
	c := &Canonicalizer{keepHost: cfg.KeepHost, rules: rules}
	if len(cfg.QueryAllow) > 0 {
		c.allow = make(map[string]bool, len(cfg.QueryAllow))
		for _, k := range cfg.QueryAllow {
			c.allow[k] = true
		}
	}
	return c, nil
}

// Canonical returns the canonical key of page:
//
//  1. the fragment, the scheme and white space around the path are dropped;
//  2. the host is dropped, or kept in lower case when KeepHost is set;
//  3. the path gets a leading slash, runs of slashes collapse to one and
//     trailing slashes are dropped ("/" stays "/");
//  4. the rewrite rules run on the path in order;
//  5. only allow-listed query parameters are kept, sorted by name.
//
// A page that is already canonical is returned without allocating.
func (c *Canonicalizer) Canonical(page string) string {
	if c.isCanonical(page) {
		return page
	}
	s := strings.TrimSpace(page)
	s, _, _ = strings.Cut(s, "#")
	s, query, _ := strings.Cut(s, "?")
	s = strings.TrimSpace(s)
	host := ""
	if i := strings.Index(s, "://"); i >= 0 && isScheme(s[:i]) {
		s = s[i+3:]
		host, s = splitHost(s)
	} else if strings.HasPrefix(s, "//") {
		host, s = splitHost(s[2:])
	}
	path := cleanPath(s)
	for _, r := range c.rules {
		// A rewrite to nothing would make every page it matches the
		// empty key (served as a hint named ""): that rule is skipped.
		if p := r.re.ReplaceAllString(path, r.repl); p != "" {
			path = p
		}
	}
	var b strings.Builder
	if c.keepHost && host != "" {
		b.WriteString(host)
	}
	b.WriteString(path)
	if q := c.query(query); q != "" {
		b.WriteByte('?')
		b.WriteString(q)
	}
	return b.String()
}

// Vocabulary maps canonical keys to model indices; *model.Vocab implements it
// (out-of-vocabulary keys map to model.UnknownIndex).
type Vocabulary interface {
	Index(page string) int64
}

// Index canonicalizes page and looks it up in v, so that pages outside the
// vocabulary map to the unknown index.
func (c *Canonicalizer) Index(v Vocabulary, page string) int32 {
	return int32(v.Index(c.Canonical(page)))
}

// isCanonical reports whether page needs no work: no rules, starts with a
// slash, has no query, fragment, space, double or trailing slash.
func (c *Canonicalizer) isCanonical(page string) bool {
	if len(c.rules) > 0 || len(page) == 0 || page[0] != '/' {
		return false
	}
	if len(page) > 1 && page[len(page)-1] == '/' {
		return false
	}
	prev := byte(0)
	for i := 0; i < len(page); i++ {
		ch := page[i]
		switch {
		case ch == '?' || ch == '#' || ch <= ' ':
			return false
		case ch == '/' && prev == '/':
			return false
		}
		prev = ch
	}
	return true
}

func (c *Canonicalizer) query(raw string) string {
	if raw == "" || len(c.allow) == 0 {
		return ""
	}
	var kept []string
	for pair := range strings.SplitSeq(raw, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		key, err := url.QueryUnescape(k)
		if err != nil || !c.allow[key] {
			continue
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			continue
		}
		kept = append(kept, url.QueryEscape(key)+"="+url.QueryEscape(val))
	}
	// Sort by name, keeping the order of values of one name.
	slices.SortStableFunc(kept, func(a, b string) int {
		ka, _, _ := strings.Cut(a, "=")
		kb, _, _ := strings.Cut(b, "=")
		return strings.Compare(ka, kb)
	})
	return strings.Join(kept, "&")
}

func isScheme(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		letter := ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z'
		if !letter && (i == 0 || !(ch >= '0' && ch <= '9' || ch == '+' || ch == '-' || ch == '.')) {
			return false
		}
	}
	return true
}

// splitHost splits "user@host:port/path" into a normalized host and the path.
func splitHost(s string) (host, path string) {
	host, path = s, "/"
	if i := strings.IndexByte(s, '/'); i >= 0 {
		host, path = s[:i], s[i:]
	}
	if i := strings.LastIndexByte(host, '@'); i >= 0 {
		host = host[i+1:]
	}
	host = strings.ToLower(host)
	host = strings.TrimSuffix(host, ":80")
	host = strings.TrimSuffix(host, ":443")
	return host, path
}

func cleanPath(p string) string {
	var b strings.Builder
	b.Grow(len(p) + 1)
	b.WriteByte('/')
	prev := byte('/')
	for i := 0; i < len(p); i++ {
		ch := p[i]
		if ch == '/' && prev == '/' {
			continue
		}
		b.WriteByte(ch)
		prev = ch
	}
	out := b.String()
	for len(out) > 1 {
		switch out[len(out)-1] {
		case '/', ' ', '\t', '\n', '\r', '\v', '\f':
			out = out[:len(out)-1]
			continue
		}
		break
	}
	return out
}
