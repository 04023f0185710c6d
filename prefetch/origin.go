package prefetch

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// originClient fetches pages from the origin in origin mode: a timeout per
// request, a body limit, a concurrency limit and a circuit breaker.
type originClient struct {
	url     string // template with {page}
	maxBody int64
	timeout time.Duration
	client  *http.Client
	sem     chan struct{}
	breaker *breaker
	m       *warmerMetrics
	now     func() time.Time

	// refused remembers pages the origin answered with a 4xx (or another
	// status that is not 2xx or 5xx) or a body over the limit, with when
	// the answer stops being believed and the drop reason: such a page is
	// not asked again before then (the breaker only counts 5xx and
	// failures, and every prediction of the page would fetch it again).
	refusedMu sync.Mutex
	refused   map[string]refusal
	// inflight coalesces fetches of one page (per-user keys of the same
	// page, in one batch or in workers at once): the first fetches, the
	// others wait for its answer. Guarded by refusedMu.
	inflight map[string]*fetchCall
}

// fetchCall is a fetch of one page under way; done is closed when body and
// reason are set.
type fetchCall struct {
	done   chan struct{}
	body   []byte
	reason string
}

// refusal is a page's last answer that was not stored.
type refusal struct {
	until  int64 // Unix ns
	reason string
}

// Refused pages are remembered this long, at most maxRefused of them (the
// map is emptied when full).
const (
	refuseFor  = 30 * time.Second
	maxRefused = 1 << 16
)

// refusedNow returns the drop reason of page when the origin refused it
// less than refuseFor ago.
func (o *originClient) refusedNow(page string) (string, bool) {
	o.refusedMu.Lock()
	defer o.refusedMu.Unlock()
	return o.refusedLocked(page)
}

// refusedLocked is refusedNow for a caller holding refusedMu.
func (o *originClient) refusedLocked(page string) (string, bool) {
	r, ok := o.refused[page]
	if !ok {
		return "", false
	}
	if o.now().UnixNano() >= r.until {
		delete(o.refused, page)
		return "", false
	}
	return r.reason, true
}

func newOriginClient(cfg Config, m *warmerMetrics, now func() time.Time) *originClient {
	o := &originClient{
		url:     cfg.OriginURL,
		maxBody: cfg.MaxBodyBytes,
		timeout: cfg.OriginTimeout,
		client:  httpClient(cfg),
		sem:     make(chan struct{}, cfg.OriginConcurrency),
		m:       m,
		now:     now,
	}
	o.breaker = &breaker{
		failures: cfg.BreakerFailures,
		cooldown: cfg.BreakerCooldown,
		probes:   cfg.BreakerProbes,
		onChange: func(s BreakerState) { m.breakerState.Set(float64(s)) },
	}
	return o
}

// close releases idle connections (and their goroutines).
func (o *originClient) close() { o.client.CloseIdleConnections() }

// pageURL renders the URL template for page. In the path each segment is
// escaped, and a page with a "." or ".." segment is refused (ok false): an
// origin or proxy that resolves dot segments would serve what lies outside
// the template's prefix. After a "?" (the page as a query value) the page
// is query-escaped whole, so it cannot add parameters.
func (o *originClient) pageURL(page string) (string, bool) {
	i := strings.Index(o.url, placeholderPage)
	prefix, suffix := o.url[:i], strings.ReplaceAll(o.url[i+len(placeholderPage):], placeholderPage, "")
	if strings.Contains(prefix, "?") {
		return prefix + url.QueryEscape(page) + suffix, true
	}
	if strings.HasSuffix(prefix, "/") {
		page = strings.TrimPrefix(page, "/")
	}
	segs := strings.Split(page, "/")
	for j, s := range segs {
		if s == "." || s == ".." {
			return "", false
		}
		segs[j] = url.PathEscape(s)
	}
	return prefix + strings.Join(segs, "/") + suffix, true
}

// fetchAll fetches every item's page not marked in skip concurrently
// (bounded by the concurrency limit) and stores the bodies of 2xx answers in
// values; failed items are counted as dropped and left nil.
func (o *originClient) fetchAll(ctx context.Context, batch []item, values [][]byte, skip []bool) {
	var wg sync.WaitGroup
	// Items of a page already asked for in this batch (per-user keys of
	// one page) take that item's answer: one request per page.
	var first map[string]int
	var dups []int // pairs: the item, the earlier item of its page
	reasons := make([]string, len(batch))
	drop := func(i int, reason string) {
		reasons[i] = reason
		o.m.drop(reason, 1)
	}
	for i := range batch {
		if skip[i] {
			continue
		}
		if j, ok := first[batch[i].page]; ok {
			dups = append(dups, i, j)
			continue
		}
		if first == nil {
			first = make(map[string]int)
		}
		first[batch[i].page] = i
		if reason, ok := o.refusedNow(batch[i].page); ok {
			drop(i, reason) // not asked again so soon
			continue
		}
		if !o.breaker.allow(o.now()) {
			drop(i, dropBreakerOpen)
			continue
		}
		select {
		case o.sem <- struct{}{}:
		case <-ctx.Done():
			o.breaker.release() // no verdict on the origin
			drop(i, dropCanceled)
			continue
		}
		wg.Go(func() {
			defer func() { <-o.sem }()
			body, reason := o.fetchShared(ctx, batch[i].page)
			if reason != "" {
				drop(i, reason)
				return
			}
			values[i] = body
		})
	}
	wg.Wait()
	for k := 0; k < len(dups); k += 2 {
		i, j := dups[k], dups[k+1]
		if values[j] != nil {
			values[i] = values[j] // bodies are never modified
		} else {
			drop(i, reasons[j])
		}
	}
}

// fetchShared is fetch for page, unless the origin refused it lately (its
// reason then, no request) or a fetch of it is under way (that fetch's
// answer, shared: bodies are never modified). A refusal is remembered for
// refuseFor. A fetch that needs no answer from the origin (a breaker
// verdict) is not shared with callers that did not wait for it.
func (o *originClient) fetchShared(ctx context.Context, page string) ([]byte, string) {
	o.refusedMu.Lock()
	if reason, ok := o.refusedLocked(page); ok {
		o.refusedMu.Unlock()
		o.breaker.release() // allowed by the caller, not used
		return nil, reason
	}
	if c, ok := o.inflight[page]; ok {
		o.refusedMu.Unlock()
		o.breaker.release()
		select {
		case <-c.done:
			return c.body, c.reason
		case <-ctx.Done():
			return nil, dropCanceled
		}
	}
	if o.inflight == nil {
		o.inflight = make(map[string]*fetchCall)
	}
	c := &fetchCall{done: make(chan struct{})}
	page = strings.Clone(page)
	o.inflight[page] = c
	o.refusedMu.Unlock()

	c.body, c.reason = o.fetch(ctx, page)
	o.refusedMu.Lock()
	delete(o.inflight, page)
	if c.reason == dropOriginStatus || c.reason == dropOriginTooLarge {
		if o.refused == nil || len(o.refused) >= maxRefused {
			o.refused = make(map[string]refusal)
		}
		o.refused[page] = refusal{until: o.now().Add(refuseFor).UnixNano(), reason: c.reason}
	}
	o.refusedMu.Unlock()
	close(c.done)
	return c.body, c.reason
}

// fetch GETs one page. It returns the body of a 2xx answer, or the drop
// reason. Transport errors, timeouts and 5xx answers count as breaker
// failures; other answers show the origin is up; a bad URL or shutdown gives
// no verdict.
func (o *originClient) fetch(ctx context.Context, page string) (body []byte, reason string) {
	ok, verdict := false, true
	defer func() {
		if verdict {
			o.breaker.done(ok, o.now())
		} else {
			o.breaker.release()
		}
	}()
	rctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	u, safe := o.pageURL(page)
	if !safe {
		verdict = false // the page, not the origin
		o.m.origin(originBadURL)
		return nil, dropInvalid
	}
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
	if err != nil {
		verdict = false // our URL, not the origin
		o.m.origin(originBadURL)
		return nil, dropInvalid
	}
	resp, err := o.client.Do(req)
	if err != nil && ctx.Err() != nil {
		verdict = false // shutting down, not the origin's fault
		return nil, dropCanceled
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			o.m.origin(originTimeout)
			return nil, dropOriginTimeout
		}
		o.m.origin(originError)
		return nil, dropOriginError
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode >= 500:
		o.m.origin(origin5xx)
		return nil, dropOrigin5xx
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		ok = true
		o.m.origin(originOtherStatus)
		return nil, dropOriginStatus
	}
	body, err = io.ReadAll(io.LimitReader(resp.Body, o.maxBody+1))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			o.m.origin(originTimeout)
			return nil, dropOriginTimeout
		}
		o.m.origin(originError)
		return nil, dropOriginError
	}
	ok = true
	if int64(len(body)) > o.maxBody {
		o.m.origin(originTooLarge)
		return nil, dropOriginTooLarge
	}
	if body == nil {
		body = []byte{} // an empty 2xx body is still stored
	}
	o.m.origin(originOK)
	return body, ""
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
