package engine

import (
	"context"
	"hash/maphash"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
	"github.com/prefetchd/prefetchd/transitions"
)

// This file wires the online transition statistics (Deps.Transitions) into
// the engine: every applied click that follows another in its session is
// observed as a transition (a wave's in one call), and every prediction
// blends the statistics of the page the user is on into the model's
// probabilities by transitions.Blend, so pages outside the vocabulary can
// be chosen. Such a page is a candidate with a negative index, -(i+1) for
// buffers.extra[i].

// maxNewPageUsers bounds the users whose latest page is outside the
// vocabulary that the engine remembers by name (the history only holds the
// unknown index): least recently clicking users are forgotten first, among
// the users of one of newPageShards shards.
const (
	maxNewPageUsers = 1 << 16
	newPageShards   = 16
)

// newPages remembers, per user, the latest page when it is outside the
// vocabulary, so that the transition out of it can be learned and
// predicted. Per replica: users stay on one replica as Kafka partitions by
// user. Users are spread over shards, each with its lock, as every click
// passes here.
type newPages struct {
	seedOnce sync.Once
	seed     maphash.Seed
	shards   [newPageShards]newPageShard
}

// newPageShard is the part of newPages of some users.
type newPageShard struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, string] // guarded by mu; nil until first use
}

// shard returns user's shard.
func (n *newPages) shard(user string) *newPageShard {
	n.seedOnce.Do(func() { n.seed = maphash.MakeSeed() })
	return &n.shards[maphash.String(n.seed, user)%newPageShards]
}

func (n *newPages) get(user string) (string, bool) {
	sh := n.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.lru == nil {
		return "", false
	}
	return sh.lru.Peek(user)
}

// set remembers page as user's latest when unknown, else forgets the user.
func (n *newPages) set(user, page string, unknown bool) {
	sh := n.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !unknown {
		if sh.lru != nil {
			sh.lru.Remove(user)
		}
		return
	}
	if sh.lru == nil {
		sh.lru, _ = simplelru.NewLRU[string, string](maxNewPageUsers/newPageShards, nil) // size > 0: no error
	}
	// Copies: user and page are slices of the decoded message, which must
	// not live as long as the entry.
	if _, ok := sh.lru.Peek(user); ok {
		sh.lru.Add(user, strings.Clone(page)) // the map keeps its key
		return
	}
	sh.lru.Add(strings.Clone(user), strings.Clone(page))
}

// named is the page of vocabulary index idx, or for the unknown index the
// user's latest page outside the vocabulary ("" when not remembered).
func (e *Engine) named(l *lifecycle.Live, user string, idx int32) string {
	if idx > model.UnknownIndex {
		return l.Vocab.Page(int64(idx))
	}
	if idx == model.UnknownIndex {
		p, _ := e.newPages.get(user)
		return p
	}
	return ""
}

// transition is the transition of a just appended click into rec (its
// newest page, named page, index idx), and whether there is one: the click
// follows another of the session whose page is known by name.
func (e *Engine) transition(l *lifecycle.Live, user, page string, idx int64, at time.Time, rec *features.Record) (transitions.Transition, bool) {
	unknown := idx <= model.UnknownIndex
	var from string
	if n := len(rec.Pages); n >= 2 {
		from = e.named(l, user, rec.Pages[n-2])
	}
	e.newPages.set(user, page, unknown)
	if from == "" || strings.HasPrefix(from, "\x00") || strings.HasPrefix(page, "\x00") {
		return transitions.Transition{}, false
	}
	t := transitions.Transition{From: from, To: page, At: at, FromUnknown: rec.Pages[len(rec.Pages)-2] <= model.UnknownIndex, ToUnknown: unknown}
	if unknown {
		t.ToIndex = nextTag(l, model.UnknownIndex)
	} else {
		// The vocabulary's own string: the store keeps no copy of the
		// event's, and nextIndex compares it by address.
		t.To, t.ToIndex = l.Vocab.Page(idx), nextTag(l, idx)
	}
	return t, true
}

// nextTag is the Transition.ToIndex of a page of index idx in l's
// vocabulary: the index with l's tag in the high 32 bits.
func nextTag(l *lifecycle.Live, idx int64) int64 { return int64(l.Tag)<<32 | idx }

// nextIndex is the index in l's vocabulary of next page n: the one it was
// observed with (nextTag) when that is still l's, else looked up. A page
// in the vocabulary is also checked by name, which is cheap when n.Page is
// the vocabulary's string (see transition): equal strings at one address
// compare without reading them.
func nextIndex(l *lifecycle.Live, n *transitions.Next) int64 {
	if uint32(n.Index>>32) == l.Tag {
		switch i := n.Index & (1<<32 - 1); {
		case i == model.UnknownIndex:
			return i
		case i > model.UnknownIndex && l.Vocab.Page(i) == n.Page:
			return i
		}
	}
	return l.Vocab.Index(n.Page)
}

// statsTime is the time a click counts at in the online statistics: its
// ts, but never after now. Counts decay forward from each click's time, so
// a click dated in the future (within --max-skew) would otherwise weigh
// like e^(λ·skew) clicks and drown every other transition of its page until
// the clock caught up.
func (e *Engine) statsTime(at time.Time) time.Time {
	if now := e.cfg.Now(); at.After(now) {
		return now
	}
	return at
}

// learnOne observes the transition of one applied click (unless observe is
// false: a resumed click, whose first attempt may have) and looks up the
// statistics of its page into b.dist for the prefetch decision.
func (e *Engine) learnOne(ctx context.Context, l *lifecycle.Live, user, page string, idx int64, at time.Time, rec *features.Record, observe bool, b *buffers) {
	b.dist = nil
	if e.deps.Transitions == nil {
		return
	}
	at = e.statsTime(at)
	b.learn = b.learn[:0]
	if t, ok := e.transition(l, user, page, idx, at, rec); ok && observe {
		b.learn = append(b.learn, t)
		e.onlineErr(e.deps.Transitions.Observe(ctx, b.learn))
	}
	b.from = append(b.from[:0], page)
	var err error
	b.dists, err = e.deps.Transitions.Lookup(ctx, b.from, at, b.dists)
	if e.onlineErr(err) {
		b.dist = &b.dists[0]
	}
}

// learnWave is learnOne for the live rows of a wave: one Observe and one
// Lookup for all, each row's statistics in its dist (rows warmed early keep
// those read for it).
func (e *Engine) learnWave(ctx context.Context, l *lifecycle.Live, rows []*waveRow, b *buffers) {
	if e.deps.Transitions == nil || len(rows) == 0 {
		return
	}
	b.learn = b.learn[:0]
	for _, r := range rows {
		if t, ok := e.transition(l, r.User, r.page, r.idx, e.statsTime(r.ev.TS), &r.Rec); ok && !r.resumed {
			b.learn = append(b.learn, t)
		}
	}
	e.onlineErr(e.deps.Transitions.Observe(ctx, b.learn))
	e.lookupRows(ctx, rows, &b.dists, b)
}

// lookupRows reads, in one Lookup into *dists, the online statistics of the
// pages of the rows that have none yet (dist nil: those warmed early have
// theirs), at the time of the last row, and points each such row's dist at
// its page's. Without statistics, or when Lookup fails, dist stays nil.
func (e *Engine) lookupRows(ctx context.Context, rows []*waveRow, dists *[]transitions.Dist, b *buffers) {
	if e.deps.Transitions == nil || len(rows) == 0 {
		return
	}
	b.from = b.from[:0]
	for _, r := range rows {
		if r.dist == nil {
			b.from = append(b.from, r.page)
		}
	}
	if len(b.from) == 0 {
		return
	}
	var err error
	if *dists, err = e.deps.Transitions.Lookup(ctx, b.from, e.statsTime(rows[len(rows)-1].ev.TS), *dists); !e.onlineErr(err) {
		return
	}
	j := 0
	for _, r := range rows {
		if r.dist == nil {
			r.dist = &(*dists)[j]
			j++
		}
	}
}

// lookupQuery looks up the online statistics of the page a hint query is
// on (index current) into b.dist, and returns the page's name.
func (e *Engine) lookupQuery(ctx context.Context, l *lifecycle.Live, q hint.Query, current int64, b *buffers) string {
	b.dist = nil
	if e.deps.Transitions == nil {
		return ""
	}
	var page string
	if len(q.Pages) > 0 {
		page = e.deps.Canon.Canonical(q.Pages[len(q.Pages)-1])
	} else {
		page = e.named(l, q.UserID, int32(current))
	}
	if page == "" {
		return ""
	}
	b.from = append(b.from[:0], page)
	var err error
	if b.dists, err = e.deps.Transitions.Lookup(ctx, b.from, e.cfg.Now(), b.dists); e.onlineErr(err) {
		b.dist = &b.dists[0]
	}
	return page
}

// onlineErr logs a failure of the online statistics, at most every 10 s,
// and reports whether err is nil. The statistics are best effort: a click
// is never retried for them.
func (e *Engine) onlineErr(err error) bool {
	if err == nil {
		return true
	}
	now := time.Now().UnixNano()
	if last := e.onlineErrAt.Load(); now-last > int64(10*time.Second) && e.onlineErrAt.CompareAndSwap(last, now) {
		e.log.Warn("online transitions failed", "err", err)
	}
	return false
}

// choose is the policy's choice from probs, blended with the online
// statistics b.dist of the page the user is on (page, index current) when
// there are any: see transitions.Blend. k <= 0 and threshold < 0 mean the
// policy's. Pages outside the vocabulary are named in b.extra.
func (e *Engine) choose(l *lifecycle.Live, probs []float32, current int64, page string, k int, threshold float64, b *buffers) []prefetch.Candidate {
	pol := e.policyFor(l)
	b.extra = b.extra[:0]
	d := b.dist
	if e.deps.Transitions == nil || d == nil || !(d.N > 0) || len(d.Next) == 0 {
		return pol.Select(probs, current, k, threshold, b.cands)
	}
	if k <= 0 {
		k = pol.K()
	}
	if threshold < 0 || math.IsNaN(threshold) {
		threshold = pol.Threshold()
	}
	w := e.deps.Transitions.Blend.Weight(d.N)
	// The model's share: (1 - w) p_model, for pages without online counts
	// the order of the model; enough of them to fill k after dropping
	// those with online counts, which are scored below.
	mthr := 2.0 // nothing: the online statistics take the whole share
	if w < 1 {
		mthr = threshold / (1 - w)
	}
	b.cands = pol.Select(probs, current, k+len(d.Next), mthr, b.cands)
	// The next pages come highest count first: from the first whose
	// probability could not reach the threshold even with a model
	// probability of 1, none can, and they are not scored below. Their
	// indices are still needed to take them out of the model's candidates
	// and for c_out when a page outside the vocabulary is scored.
	scored := len(d.Next)
	for i := range d.Next {
		if w*d.Next[i].Count/d.N+(1-w) < threshold*(1-1e-9) {
			scored = i
			break
		}
	}
	b.nextIdx, b.known = b.nextIdx[:0], b.known[:0]
	var cOut float64 // the counts of next pages outside the vocabulary
	for i := range d.Next {
		if i == scored && len(b.cands) == 0 && cOut == 0 {
			break // neither needed
		}
		n := &d.Next[i]
		idx := nextIndex(l, n)
		b.nextIdx = append(b.nextIdx, idx)
		if idx <= model.UnknownIndex {
			cOut += n.Count
		} else {
			b.known = append(b.known, idx)
		}
	}
	mixed := b.mixed[:0]
	for _, c := range b.cands {
		if !slices.Contains(b.known, c.Index) {
			mixed = append(mixed, prefetch.Candidate{Index: c.Index, Probability: float32((1 - w) * float64(c.Probability))})
		}
	}
	served := false
	var ph uint64 // PageHash(page), once needed
	for i := range d.Next[:scored] {
		n := &d.Next[i]
		idx := b.nextIdx[i]
		if idx > model.UnknownIndex {
			if idx == current {
				continue // a known page is its index: no string compare
			}
		} else {
			if ph == 0 {
				ph = transitions.PageHash(page)
			}
			if n.Is(page, ph) {
				continue
			}
		}
		known := idx > model.UnknownIndex
		var pm float64
		if j := max(idx, model.UnknownIndex); j < int64(len(probs)) {
			pm = float64(probs[j])
		}
		p := e.deps.Transitions.Blend.Next(w, *d, *n, pm, known, cOut)
		if !(p >= threshold) {
			continue
		}
		if !known {
			b.extra = append(b.extra, n.Page)
			idx = -int64(len(b.extra))
		}
		mixed = append(mixed, prefetch.Candidate{Index: idx, Probability: float32(p)})
		served = true
	}
	mixed = topK(mixed, k)
	if served {
		for _, c := range mixed {
			if c.Index < 0 || slices.Contains(b.known, c.Index) {
				e.deps.Transitions.Served()
				break
			}
		}
	}
	b.mixed, b.cands = b.cands, mixed
	return mixed
}

// page names candidate index i: a vocabulary page, or an online page.
func (b *buffers) page(l *lifecycle.Live, i int64) string {
	if i < 0 {
		return b.extra[-i-1]
	}
	return l.Vocab.Page(i)
}

// onlineState is the engine's part of the online statistics.
type onlineState struct {
	newPages    newPages
	onlineErrAt atomic.Int64 // unix nanoseconds of the last logged failure
}

// topK keeps the k most probable of cs in place, most probable first; of
// equal probabilities the earlier comes first (a stable sort's order). k is
// small (a click's prefetches), so an insertion pass beats sorting them all.
func topK(cs []prefetch.Candidate, k int) []prefetch.Candidate {
	n := 0 // cs[:n] is the running top, sorted
	for _, c := range cs {
		if n == k {
			if k == 0 || !(c.Probability > cs[n-1].Probability) {
				continue
			}
			n--
		}
		j := n
		for j > 0 && cs[j-1].Probability < c.Probability {
			cs[j] = cs[j-1]
			j--
		}
		cs[j] = c
		n++
	}
	return cs[:n]
}
