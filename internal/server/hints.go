package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/hint"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// maxIngestErrors is the number of rejected events described in an
// IngestSummary.
const maxIngestErrors = 10

// hintService implements prefetchv1.HintServiceServer over the engine.
type hintService struct {
	prefetchv1.UnimplementedHintServiceServer
	s *Server
}

// Predict validates the request, asks the Predictor and converts its answer.
func (h *hintService) Predict(ctx context.Context, req *prefetchv1.PredictRequest) (*prefetchv1.PredictResponse, error) {
	q, err := h.s.predictQuery(req)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		st, _ := toStatus(err)
		return nil, st
	}
	res, err := h.s.deps.Predictor.Predict(ctx, q)
	if err != nil {
		return nil, h.s.engineError(ctx, "Predict", err)
	}
	return &prefetchv1.PredictResponse{
		Hints:        toHints(res.Hints),
		ModelVersion: res.ModelVersion,
	}, nil
}

// predictQuery validates a PredictRequest and turns it into a hint.Query.
func (s *Server) predictQuery(req *prefetchv1.PredictRequest) (hint.Query, error) {
	pages := req.GetPages()
	if len(pages) == 0 {
		if err := checkID("user_id", req.GetUserId(), s.cfg.MaxIDBytes); err != nil {
			return hint.Query{}, err
		}
	} else if len(req.GetUserId()) > s.cfg.MaxIDBytes {
		return hint.Query{}, invalidField("user_id", "is %d bytes, more than the limit of %d", len(req.GetUserId()), s.cfg.MaxIDBytes)
	}
	if len(pages) > s.cfg.MaxPages {
		return hint.Query{}, invalidField("pages", "has %d entries, more than the limit of %d", len(pages), s.cfg.MaxPages)
	}
	for i, p := range pages {
		if p == "" {
			return hint.Query{}, invalidField(fmt.Sprintf("pages[%d]", i), "must not be empty")
		}
		if len(p) > s.cfg.MaxPageBytes {
			return hint.Query{}, invalidField(fmt.Sprintf("pages[%d]", i), "is %d bytes, more than the limit of %d", len(p), s.cfg.MaxPageBytes)
		}
	}
	q := hint.Query{UserID: req.GetUserId(), Pages: pages, Threshold: -1}
	if req.K != nil {
		k := req.GetK()
		if k < 1 || k > MaxK {
			return hint.Query{}, invalidField("k", "is %d, want 1..%d", k, MaxK)
		}
		q.K = int(k)
	}
	if req.Threshold != nil {
		t := req.GetThreshold()
		if !(t >= 0 && t <= 1) { // also refuses NaN
			return hint.Query{}, invalidField("threshold", "is %v, want 0..1", t)
		}
		q.Threshold = t
	}
	return q, nil
}

// toHints converts engine hints, allocating all messages in one slice.
func toHints(in []hint.Hint) []*prefetchv1.Hint {
	if len(in) == 0 {
		return nil
	}
	backing := make([]prefetchv1.Hint, len(in))
	out := make([]*prefetchv1.Hint, len(in))
	for i, h := range in {
		m := &backing[i]
		m.Page = h.Page
		m.Probability = h.Probability
		m.Warm = h.Warm
		out[i] = m
	}
	return out
}

// engineError maps an engine error to a status and logs it once if it is
// unexpected.
func (s *Server) engineError(ctx context.Context, op string, err error) error {
	if ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		// A dependency's own timeout (a Redis round trip's), not the
		// call's deadline: the service cannot answer now.
		return status.Error(codes.Unavailable, err.Error())
	}
	st, internal := toStatus(err)
	if internal {
		s.log.ErrorContext(ctx, "engine call failed", "op", op, "err", err)
	}
	return st
}

// WatchHints subscribes to the chosen users and forwards their updates until
// the caller cancels (its context's status), the Watcher closes the
// subscription (UNAVAILABLE: before a model is loaded) or the server shuts
// down (UNAVAILABLE). Response headers are sent once the
// subscription is in place, so a caller that waits for them misses no click.
func (h *hintService) WatchHints(req *prefetchv1.WatchHintsRequest, stream grpc.ServerStreamingServer[prefetchv1.HintUpdate]) error {
	s := h.s
	if s.deps.Watcher == nil {
		return status.Error(codes.Unimplemented, "WatchHints is not enabled on this server")
	}
	users := req.GetUserIds()
	if len(users) == 0 {
		return invalidField("user_ids", "must not be empty")
	}
	if len(users) > s.cfg.MaxUsers {
		return invalidField("user_ids", "has %d entries, more than the limit of %d", len(users), s.cfg.MaxUsers)
	}
	for i, u := range users {
		if err := checkID(fmt.Sprintf("user_ids[%d]", i), u, s.cfg.MaxIDBytes); err != nil {
			return err
		}
	}
	if n := s.watchers.Add(1); n > int64(s.cfg.MaxWatchers) {
		s.watchers.Add(-1)
		return status.Errorf(codes.ResourceExhausted, "too many WatchHints streams open on this server (limit %d); close one or retry later", s.cfg.MaxWatchers)
	}
	defer s.watchers.Add(-1)
	ctx := stream.Context()
	presence, _ := s.deps.Watcher.(hint.Presence)
	updates, cancel := s.deps.Watcher.Subscribe(users, s.cfg.WatchBuffer)
	defer cancel()
	// A send fails with the transport's error (UNAVAILABLE, or io.EOF)
	// when the caller has gone, maybe before its context ends: the stream
	// ends as CANCELED then, unless the server is shutting down.
	gone := func(err error) error {
		if ctx.Err() != nil {
			st, _ := toStatus(ctx.Err())
			return st
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.Canceled, codes.Unknown:
			select {
			case <-s.drain:
				return status.Error(codes.Unavailable, "server shutting down")
			default:
				return status.Errorf(codes.Canceled, "the caller went away: %v", err)
			}
		}
		return err
	}
	if err := stream.SendHeader(nil); err != nil {
		return gone(err)
	}
	for {
		select {
		case <-ctx.Done():
			st, _ := toStatus(ctx.Err())
			return st
		case <-s.drain:
			s.metrics.watchClosed.Inc()
			return status.Error(codes.Unavailable, "server shutting down")
		case u, ok := <-updates:
			if !ok {
				// Closed by the Watcher, not by cancel: it cannot stream
				// (no model is loaded yet).
				s.metrics.watchClosed.Inc()
				return status.Error(codes.Unavailable, "hints cannot be streamed now (no model is loaded yet); retry later")
			}
			hints := toHints(u.Result.Hints)
			if presence != nil && len(hints) > 0 {
				// Warm now, as Predict answers: the update's own hints are
				// shared with other subscribers, so the flags go on the copy.
				for i, w := range presence.WarmNow(ctx, u.UserID, u.Result.Hints) {
					if i < len(hints) {
						hints[i].Warm = w
					}
				}
			}
			s.sending.Add(1)
			err := stream.Send(&prefetchv1.HintUpdate{
				UserId:       u.UserID,
				Hints:        hints,
				ModelVersion: u.Result.ModelVersion,
				At:           timestamppb.New(u.At),
			})
			s.sending.Add(-1)
			if err != nil {
				return gone(err)
			}
		}
	}
}

// maxIngestRun bounds how many received events Ingest hands to a
// BatchIngester at once.
const maxIngestRun = 64

// Ingest validates each event, re-encodes it in the Kafka wire format and
// hands it to the Ingester. Events the client has already sent go together
// to a BatchIngester (up to maxIngestRun; never waiting for more). Rejected
// events are counted by reason and skipped, duplicates counted; an engine
// failure other than a rejection ends the stream with its status (events
// before it were applied; events of the same run after it may or may not
// have been).
func (h *hintService) Ingest(stream grpc.ClientStreamingServer[prefetchv1.ClickEvent, prefetchv1.IngestSummary]) error {
	s := h.s
	if s.deps.Ingester == nil {
		return status.Error(codes.Unimplemented, "Ingest is not enabled on this server")
	}
	ctx := stream.Context()
	batcher, _ := s.deps.Ingester.(hint.BatchIngester)
	// A reader goroutine receives ahead, so that what the client has sent
	// meanwhile forms the next run. It ends with the stream (EOF or error,
	// forwarded) or when the handler returns (ctx ends).
	type received struct {
		ev  *prefetchv1.ClickEvent
		err error
	}
	recv := make(chan received, maxIngestRun)
	// recvErr is the reader's last error: when grpc-go ends the stream
	// itself (a message over the size limit: RESOURCE_EXHAUSTED to the
	// client), the handler sees its context end and returns this status,
	// not CANCELED, so that the metrics say what the client got.
	var recvErr atomic.Pointer[error]
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			ev, err := stream.Recv()
			if err != nil {
				recvErr.Store(&err)
			}
			select {
			case recv <- received{ev, err}:
			case <-ctx.Done():
				return
			}
			if ends(err) {
				return
			}
		}
	}()
	sum := &prefetchv1.IngestSummary{RejectedByReason: map[string]uint64{}}
	reject := func(index uint64, reason, msg string) {
		sum.Rejected++
		sum.RejectedByReason[reason]++
		s.metrics.ingestEvents.WithLabelValues("rejected", reason).Inc()
		if len(sum.FirstErrors) < maxIngestErrors {
			sum.FirstErrors = append(sum.FirstErrors, &prefetchv1.IngestError{Index: index, Reason: reason, Message: msg})
		}
	}
	type rejection struct {
		index       uint64
		reason, msg string
	}
	var (
		index    uint64
		run      []received
		wires    [][]byte
		pos      []uint64 // stream index of each wire
		errs     []error
		rejected []rejection // of the run, reported in stream order
	)
	for {
		// The next run: one event (waiting for it), then what has arrived.
		run = run[:0]
		select {
		case r := <-recv:
			run = append(run, r)
		case <-ctx.Done():
			// The reader's Recv fails at once on a stream that ended.
			select {
			case <-readerDone:
			case <-time.After(100 * time.Millisecond):
			}
			if e := recvErr.Load(); e != nil {
				if st, ok := status.FromError(*e); ok && st.Code() == codes.ResourceExhausted {
					return st.Err()
				}
			}
			return status.FromContextError(ctx.Err()).Err()
		}
	fill:
		for !ends(run[len(run)-1].err) && len(run) < maxIngestRun {
			select {
			case r := <-recv:
				run = append(run, r)
			default:
				break fill
			}
		}
		var end error // how the stream ended, after this run
		wires, pos, rejected = wires[:0], pos[:0], rejected[:0]
		for _, r := range run {
			if e, bad := isBadMessage(r.err); bad {
				// One event the stream could not decode: rejected like
				// an undecodable event on Kafka.
				rejected = append(rejected, rejection{index, e.reason, e.detail})
				index++
				continue
			}
			if r.err != nil {
				end = r.err
				break
			}
			reason, msg := s.checkEvent(r.ev)
			var wire []byte
			if reason == "" {
				// A fresh slice per event: the engine may keep it.
				var err error
				if wire, err = encodeWireEvent(r.ev); err != nil {
					reason, msg = "invalid", err.Error()
				}
			}
			if reason != "" {
				rejected = append(rejected, rejection{index, reason, msg})
			} else {
				wires = append(wires, wire)
				pos = append(pos, index)
			}
			index++
		}
		errs = append(errs[:0], make([]error, len(wires))...)
		n := len(wires)
		if batcher != nil && len(wires) > 1 {
			n = batcher.IngestJSONMany(ctx, wires, errs)
		} else {
			for i, w := range wires {
				if errs[i] = s.deps.Ingester.IngestJSON(ctx, w); errs[i] != nil && !errors.Is(errs[i], hint.ErrInvalid) && !errors.Is(errs[i], hint.ErrDuplicate) {
					n = i
					break
				}
			}
		}
		for i := range min(n+1, len(wires)) {
			err := errs[i]
			switch {
			case err == nil && i < n:
				sum.Accepted++
				s.metrics.ingestEvents.WithLabelValues("accepted", "").Inc()
			case errors.Is(err, hint.ErrDuplicate):
				sum.Duplicates++
				s.metrics.ingestEvents.WithLabelValues("duplicate", "").Inc()
			case errors.Is(err, hint.ErrInvalid):
				// The consumer's own reason (ts_skew, ...) when it gives one.
				reason := "invalid"
				if re := (*features.RejectError)(nil); errors.As(err, &re) && re.Reason != "" {
					reason = re.Reason
				}
				rejected = append(rejected, rejection{pos[i], reason, err.Error()})
			case i == n:
				if err == nil {
					err = errors.New("ingester stopped without an error")
				}
				return s.engineError(ctx, "Ingest", err)
			}
		}
		slices.SortFunc(rejected, func(a, b rejection) int { return cmp.Compare(a.index, b.index) })
		for _, r := range rejected {
			reject(r.index, r.reason, r.msg)
		}
		switch {
		case errors.Is(end, io.EOF):
			return stream.SendAndClose(sum)
		case end != nil:
			return end
		}
	}
}

// ends reports whether a stream's Recv error ends it: any but a message
// that is not valid UTF-8, which is one rejected event.
func ends(err error) bool {
	_, bad := isBadMessage(err)
	return err != nil && !bad
}

// checkEvent returns the rejection reason and message for an invalid event,
// or "" for a valid one.
func (s *Server) checkEvent(ev *prefetchv1.ClickEvent) (reason, msg string) {
	type field struct {
		name     string
		v        string
		required bool
		max      int
	}
	for _, f := range []field{
		{"user_id", ev.GetUserId(), true, s.cfg.MaxIDBytes},
		{"page", ev.GetPage(), true, s.cfg.MaxPageBytes},
		{"session_id", ev.GetSessionId(), false, s.cfg.MaxIDBytes},
		{"referrer", ev.GetReferrer(), false, s.cfg.MaxPageBytes},
		{"event_id", ev.GetEventId(), false, s.cfg.MaxIDBytes},
	} {
		if f.required && f.v == "" {
			return "empty_" + f.name, f.name + ": must not be empty"
		}
		if len(f.v) > f.max {
			return "oversized_" + f.name, fmt.Sprintf("%s: is %d bytes, more than the limit of %d", f.name, len(f.v), f.max)
		}
	}
	if ev.GetTs() == nil {
		return "missing_ts", "ts: must be set"
	}
	if err := ev.GetTs().CheckValid(); err != nil {
		return "invalid_ts", "ts: " + err.Error()
	}
	return "", ""
}

// encodeWireEvent returns the Kafka JSON form of ev (features/EVENTS.md).
func encodeWireEvent(ev *prefetchv1.ClickEvent) ([]byte, error) {
	b, err := features.Encode(features.Event{
		UserID:    ev.GetUserId(),
		Page:      ev.GetPage(),
		TS:        ev.GetTs().AsTime(),
		SessionID: ev.GetSessionId(),
		Referrer:  ev.GetReferrer(),
		EventID:   ev.GetEventId(),
	})
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	return b, nil
}

// Ping answers at once; it is the baseline for latency measurements.
func (h *hintService) Ping(context.Context, *prefetchv1.PingRequest) (*prefetchv1.PingResponse, error) {
	return &prefetchv1.PingResponse{}, nil
}
