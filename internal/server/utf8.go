package server

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Requests that protobuf-go cannot decode: a string that is not valid
// UTF-8, or bytes that are not a message of the method's type. grpc-go turns
// any decoding error into INTERNAL before a handler or an interceptor runs.
// The server's codec therefore lets such a message through (decoded in
// part, or not at all) and marks it; the interceptors answer a marked unary
// request with INVALID_ARGUMENT, and a marked stream message makes RecvMsg
// fail with a *badMessage error (INVALID_ARGUMENT), which Ingest counts as
// one rejected event (reason "utf8" or "proto") and goes on.

// badMessage is the error of a request message protobuf-go could not
// decode: the field (a dotted path; "" when it could not be told), what is
// wrong with it, and the Ingest rejection reason.
type badMessage struct{ field, what, detail, reason string }

func (e *badMessage) Error() string { return e.detail }

// GRPCStatus makes the error INVALID_ARGUMENT for grpc-go, with the field
// in the message and in a BadRequest detail like any invalid field.
func (e *badMessage) GRPCStatus() *status.Status {
	field := e.field
	if field == "" {
		field = "request"
	}
	st, _ := status.FromError(invalidField(field, "%s", e.what))
	return st
}

// Ingest rejection reasons of messages that could not be decoded.
const (
	reasonUTF8  = "utf8"  // a string field is not valid UTF-8
	reasonProto = "proto" // not a protobuf message of the method's type
)

// utf8Codec is the proto codec with the marking described above.
type utf8Codec struct {
	encoding.CodecV2
	marks *marks
}

func newUTF8Codec(m *marks) utf8Codec {
	return utf8Codec{CodecV2: encoding.GetCodecV2("proto"), marks: m}
}

// marks are the marks of undecodable messages, by message pointer. A mark
// is taken as soon as the call reads its message, but grpc-go may fail a
// unary call after decoding (the caller cancels, or sends a second message)
// without any interceptor running: such a mark would stay. So the message
// is emptied when marked (a mark keeps no request data), and marks older
// than markMaxAge are swept as new ones come.
type marks struct {
	m         sync.Map // message pointer -> mark
	lastSweep atomic.Int64
}

type mark struct {
	err *badMessage
	at  int64 // Unix ns
}

// markMaxAge is the age past which a mark is an orphan: a call reads its
// message at once, so a mark is taken within microseconds.
var markMaxAge = 30 * time.Second

func (ms *marks) store(v any, e *badMessage) {
	now := time.Now().UnixNano()
	ms.m.Store(v, mark{e, now})
	if last := ms.lastSweep.Load(); now-last > int64(markMaxAge)/2 && ms.lastSweep.CompareAndSwap(last, now) {
		ms.m.Range(func(k, v any) bool {
			if now-v.(mark).at > int64(markMaxAge) {
				ms.m.Delete(k)
			}
			return true
		})
	}
}

func (ms *marks) take(v any) *badMessage {
	if mk, ok := ms.m.LoadAndDelete(v); ok {
		return mk.(mark).err
	}
	return nil
}

// Unmarshal implements encoding.CodecV2.
func (c utf8Codec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	e := &badMessage{what: "not valid UTF-8", detail: "a string field is not valid UTF-8", reason: reasonUTF8}
	if strings.Contains(err.Error(), "invalid UTF-8") {
		if name := badField(data.Materialize(), m.ProtoReflect().Descriptor()); name != "" {
			e.field, e.detail = name, name+": not valid UTF-8"
		}
	} else {
		e.what = "not a " + string(m.ProtoReflect().Descriptor().FullName()) + " message (protobuf decoding failed)"
		e.detail, e.reason = "request: "+e.what, reasonProto
	}
	proto.Reset(m) // the mark must not keep the request's data
	c.marks.store(v, e)
	return nil
}

// badField returns the name (a dotted path into nested messages) of the
// first string field of the wire message b, of type md, that is not valid
// UTF-8, or "".
func badField(b []byte, md protoreflect.MessageDescriptor) string {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return ""
		}
		value := b[:n]
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil || typ != protowire.BytesType {
			continue
		}
		v, _ := protowire.ConsumeBytes(value)
		switch fd.Kind() {
		case protoreflect.StringKind:
			if !utf8.Valid(v) {
				return string(fd.Name())
			}
		case protoreflect.MessageKind: // a map entry is a message too
			if inner := badField(v, fd.Message()); inner != "" && fd.IsMap() {
				return string(fd.Name())
			} else if inner != "" {
				return string(fd.Name()) + "." + inner
			}
		}
	}
	return ""
}

// takeMark returns and forgets the mark of message v, or nil.
func (s *Server) takeMark(v any) error {
	if e := s.marks.take(v); e != nil {
		return e
	}
	return nil
}

// markedStream fails RecvMsg for marked messages.
type markedStream struct {
	grpc.ServerStream
	s *Server
}

// RecvMsg implements grpc.ServerStream. The mark is taken whatever
// RecvMsg returns: grpc-go may decode a message into v and still fail (a
// second request message on a server-streaming call), and a mark left
// behind would keep v forever.
func (m markedStream) RecvMsg(v any) error {
	err := m.ServerStream.RecvMsg(v)
	bad := m.s.takeMark(v)
	if err != nil {
		return err
	}
	return bad
}

// isBadMessage reports whether err is a stream message's badMessage.
func isBadMessage(err error) (*badMessage, bool) {
	var e *badMessage
	return e, errors.As(err, &e)
}
