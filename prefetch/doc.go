// Package prefetch is the stage of prefetchd that turns scores into a warm
// cache: model probabilities in, warm Redis keys out, and figures on how much
// the warming helped.
//
// The pipeline is
//
//	features (events in, histories out)
//	  -> model (histories in, probabilities out)
//	  -> prefetch (probabilities in, warm cache out)
//
// and this package has three parts:
//
//   - Policy decides which pages to prefetch from one probability vector: the
//     top k pages at or above a threshold, never the page the user is on, with
//     an optional expected-utility rule (probability times a per-page cost
//     weight). It allocates nothing per decision.
//   - Warmer writes those pages to Redis without ever blocking the caller: a
//     bounded queue drained by workers with pipelined SET key value EX ttl NX,
//     per-user and global rate limits, a budget per window, skipping pages that
//     are still warm and coalescing identical warms in flight. In hint mode it
//     stores a small JSON hint record; in origin mode it fetches the page from
//     an origin over HTTP behind a timeout, a body limit, a concurrency limit
//     and a circuit breaker.
//   - Evaluator joins the prefetches with the clicks that follow within the
//     TTL and reports, per model version, prefetches issued and used,
//     precision, coverage and bytes wasted, as Prometheus metrics and as Stats.
package prefetch
