package server

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/prefetchd/prefetchd/internal/server/servertest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// badMarker is replaced on the wire by as many bytes that are not UTF-8:
// protobuf-go refuses to marshal such a string itself.
const badMarker = "@@BAD@@"

// badCodec is a client codec that sends badMarker as invalid UTF-8, as a
// client in another language (or a raw one) may.
type badCodec struct{ encoding.CodecV2 }

func (c badCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	if err != nil {
		return nil, err
	}
	b = bytes.ReplaceAll(b, []byte(badMarker), bytes.Repeat([]byte{0xff}, len(badMarker)))
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func withBadUTF8() grpc.CallOption {
	return grpc.ForceCodecV2(badCodec{encoding.GetCodecV2("proto")})
}

// markCount counts the marks left in the server.
func markCount(h *harness) int {
	n := 0
	h.srv.marks.m.Range(func(any, any) bool { n++; return true })
	return n
}

// TestInvalidUTF8 checks that strings that are not UTF-8 get
// INVALID_ARGUMENT naming the field (grpc-go alone answers INTERNAL), that
// Ingest rejects such an event alone (reason utf8) and applies the others,
// and that no mark outlives its call.
func TestInvalidUTF8(t *testing.T) {
	ts := timestamppb.New(time.Date(1995, 7, 1, 0, 0, 1, 0, time.UTC))
	ing := &servertest.Ingester{}
	h := start(t, Config{AdminToken: "secret-token-for-tests"}, Deps{Predictor: &servertest.Predictor{}, Ingester: ing, Models: &servertest.Models{}})
	ctx := testCtx(t)

	_, err := h.hints.Predict(ctx, &prefetchv1.PredictRequest{UserId: "u" + badMarker}, withBadUTF8())
	wantCode(t, err, codes.InvalidArgument)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "user_id") || !strings.Contains(msg, "UTF-8") {
		t.Errorf("Predict message %q, want the field user_id and UTF-8 named", msg)
	}
	// A valid request on the same connection still works.
	if _, err := h.hints.Predict(ctx, &prefetchv1.PredictRequest{UserId: "u1"}); err != nil {
		t.Errorf("valid Predict after an invalid one: %v", err)
	}
	// Unauthenticated first for the admin service; the mark is dropped too.
	_, err = h.models.Activate(ctx, &prefetchv1.ActivateRequest{Version: "v" + badMarker}, withBadUTF8())
	wantCode(t, err, codes.Unauthenticated)

	sum := ingestAll(t, h, withBadUTF8(),
		&prefetchv1.ClickEvent{UserId: "u1", Page: "/a", Ts: ts},
		&prefetchv1.ClickEvent{UserId: "u1", Page: "/b" + badMarker, Ts: ts},
		&prefetchv1.ClickEvent{UserId: "u2", Page: "/c", Ts: ts})
	if sum.GetAccepted() != 2 || sum.GetRejected() != 1 || sum.GetRejectedByReason()["utf8"] != 1 {
		t.Errorf("summary %v, want 2 accepted and 1 rejected for utf8", sum)
	}
	if fe := sum.GetFirstErrors(); len(fe) != 1 || fe[0].GetIndex() != 1 || !strings.Contains(fe[0].GetMessage(), "page") {
		t.Errorf("first errors %v, want index 1 naming the field page", fe)
	}
	var got []string
	for _, e := range ing.Events() {
		got = append(got, string(e))
	}
	if g := fmt.Sprint(got); !strings.Contains(g, `"page":"/a"`) || !strings.Contains(g, `"page":"/c"`) || len(got) != 2 {
		t.Errorf("engine got %v, want the events of /a and /c", got)
	}
	if n := markCount(h); n != 0 {
		t.Errorf("%d marks left after the calls, want 0", n)
	}
}

// TestInvalidUTF8NoMarkLeft sends a server-streaming call two request
// messages, the first not UTF-8: grpc-go decodes both into one message and
// fails the call; the mark must not outlive it (it kept the message, and
// memory grew with every such call).
func TestInvalidUTF8NoMarkLeft(t *testing.T) {
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}, Watcher: servertest.NewWatcher()})
	ctx := testCtx(t)
	for range 3 {
		cs, err := h.conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
			"/prefetch.v1.HintService/WatchHints", withBadUTF8())
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{"u" + badMarker, "v"} {
			if err := cs.SendMsg(&prefetchv1.WatchHintsRequest{UserIds: []string{u}}); err != nil {
				t.Fatal(err)
			}
		}
		if err := cs.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if err := cs.RecvMsg(&prefetchv1.HintUpdate{}); err == nil {
			t.Fatal("two requests on a server-streaming call: RecvMsg succeeded, want an error")
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for markCount(h) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d marks left after the calls ended, want 0", markCount(h))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// garbageMarker makes garbageCodec send, instead of the message holding
// it, bytes that are no protobuf message: a length-delimited field 1 whose
// length runs past the end.
const garbageMarker = "@@GARBAGE@@"

type garbageCodec struct{ encoding.CodecV2 }

func (c garbageCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	if err != nil {
		return nil, err
	}
	if bytes.Contains(b, []byte(garbageMarker)) {
		b = []byte{0x0a, 0xff, 0xff, 0x03, 'x'}
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

// TestMalformedProto: a request that is not a protobuf message of the
// method's type gets INVALID_ARGUMENT (grpc-go alone answers INTERNAL), and
// in an Ingest stream such an event is rejected alone (reason proto) while
// the stream goes on.
func TestMalformedProto(t *testing.T) {
	ts := timestamppb.New(time.Date(1995, 7, 1, 0, 0, 1, 0, time.UTC))
	ing := &servertest.Ingester{}
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}, Ingester: ing})
	ctx := testCtx(t)
	garbage := grpc.ForceCodecV2(garbageCodec{encoding.GetCodecV2("proto")})

	_, err := h.hints.Predict(ctx, &prefetchv1.PredictRequest{UserId: garbageMarker}, garbage)
	wantCode(t, err, codes.InvalidArgument)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "prefetch.v1.PredictRequest") {
		t.Errorf("Predict message %q, want the message type named", msg)
	}
	sum := ingestAll(t, h, garbage,
		&prefetchv1.ClickEvent{UserId: "u1", Page: "/a", Ts: ts},
		&prefetchv1.ClickEvent{UserId: "u1", Page: garbageMarker, Ts: ts},
		&prefetchv1.ClickEvent{UserId: "u2", Page: "/c", Ts: ts})
	if sum.GetAccepted() != 2 || sum.GetRejected() != 1 || sum.GetRejectedByReason()[reasonProto] != 1 {
		t.Errorf("summary %v, want 2 accepted and 1 rejected for proto", sum)
	}
	if n := len(ing.Events()); n != 2 {
		t.Errorf("engine got %d events, want 2", n)
	}
	if n := markCount(h); n != 0 {
		t.Errorf("%d marks left after the calls, want 0", n)
	}
}

// ingestAll sends evs in one Ingest stream with opt and returns its summary.
func ingestAll(t *testing.T, h *harness, opt grpc.CallOption, evs ...*prefetchv1.ClickEvent) *prefetchv1.IngestSummary {
	t.Helper()
	stream, err := h.hints.Ingest(testCtx(t), opt)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	for i, ev := range evs {
		if err := stream.Send(ev); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	sum, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatalf("CloseAndRecv: %v", err)
	}
	return sum
}

// TestMarkOrphansSwept: a unary call that grpc-go fails after decoding a
// bad message (a second request message) leaves its mark behind, as no
// interceptor runs; such a mark keeps no request data and is swept once
// older than markMaxAge, so such calls cannot grow the server's memory.
func TestMarkOrphansSwept(t *testing.T) {
	old := markMaxAge
	markMaxAge = 100 * time.Millisecond
	t.Cleanup(func() { markMaxAge = old })
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}})
	ctx := testCtx(t)
	big := strings.Repeat("p", 2000)
	orphan := func() {
		cs, err := h.conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, "/prefetch.v1.HintService/Predict", withBadUTF8())
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			req := &prefetchv1.PredictRequest{UserId: "u" + badMarker, Pages: []string{"/" + big, "/" + big}}
			if err := cs.SendMsg(req); err != nil {
				break
			}
		}
		_ = cs.CloseSend()
		_ = cs.RecvMsg(&prefetchv1.PredictResponse{})
	}
	for range 20 {
		orphan()
	}
	left := markCount(h)
	if left == 0 {
		t.Fatal("no mark left behind: the case this test covers did not happen")
	}
	h.srv.marks.m.Range(func(k, _ any) bool {
		if n := proto.Size(k.(proto.Message)); n != 0 {
			t.Errorf("an orphan mark keeps a message of %d bytes, want it emptied", n)
		}
		return true
	})
	time.Sleep(2 * markMaxAge)
	orphan() // storing a mark sweeps the old ones
	if n := markCount(h); n > 1 {
		t.Fatalf("%d marks after the sweep (%d before), want at most the newest", n, left)
	}
}
