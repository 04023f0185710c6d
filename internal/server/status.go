package server

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/prefetchd/prefetchd/internal/hint"
)

// toStatus turns an error from the engine into a gRPC status error. Errors
// that already carry a status keep it. It reports whether the error is
// unexpected (INTERNAL), so the caller logs it once.
func toStatus(err error) (error, bool) {
	switch {
	case err == nil:
		return nil, false
	case errors.Is(err, hint.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error()), false
	case errors.Is(err, hint.ErrNoModel):
		return status.Error(codes.Unavailable, err.Error()), false
	case errors.Is(err, hint.ErrUnknownVersion):
		return status.Error(codes.NotFound, err.Error()), false
	case errors.Is(err, hint.ErrRefused), errors.Is(err, hint.ErrNoRollback):
		return status.Error(codes.FailedPrecondition, err.Error()), false
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error()), false
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error()), false
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return err, false
	}
	return status.Error(codes.Internal, "internal error"), true
}

// invalidField returns an INVALID_ARGUMENT status that names field in its
// message and in a BadRequest detail.
func invalidField(field, format string, args ...any) error {
	desc := fmt.Sprintf(format, args...)
	st := status.New(codes.InvalidArgument, field+": "+desc)
	if ds, err := st.WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: desc}},
	}); err == nil {
		st = ds
	}
	return st.Err()
}

// checkID validates a required identifier of at most maxBytes bytes.
func checkID(field, v string, maxBytes int) error {
	if v == "" {
		return invalidField(field, "must not be empty")
	}
	if len(v) > maxBytes {
		return invalidField(field, "is %d bytes, more than the limit of %d", len(v), maxBytes)
	}
	return nil
}
