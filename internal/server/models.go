package server

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// modelService implements prefetchv1.ModelServiceServer over hint.Models.
// Authorization happens in the interceptor, before these methods run.
type modelService struct {
	prefetchv1.UnimplementedModelServiceServer
	s *Server
}

// errNoModels answers when the server was built without Deps.Models.
func errNoModels() error {
	return status.Error(codes.Unimplemented, "ModelService is not enabled on this server")
}

// Status reports the model versions the engine knows.
func (m *modelService) Status(ctx context.Context, _ *prefetchv1.StatusRequest) (*prefetchv1.StatusResponse, error) {
	if m.s.deps.Models == nil {
		return nil, errNoModels()
	}
	st, err := m.s.deps.Models.Status(ctx)
	if err != nil {
		return nil, m.s.engineError(ctx, "Status", err)
	}
	resp := &prefetchv1.StatusResponse{
		Active:   st.Active,
		Versions: make([]*prefetchv1.ModelVersion, 0, len(st.Versions)),
	}
	for _, v := range st.Versions {
		mv := &prefetchv1.ModelVersion{
			Name:             v.Name,
			Version:          v.Version,
			Loaded:           v.Loaded,
			Active:           v.Active,
			RefusedReason:    v.Refused,
			Requests:         v.Requests,
			PrefetchesIssued: v.Issued,
			PrefetchesUsed:   v.Used,
			Precision:        v.Precision,
		}
		if !v.LoadedAt.IsZero() {
			mv.LoadedAt = timestamppb.New(v.LoadedAt)
		}
		resp.Versions = append(resp.Versions, mv)
	}
	return resp, nil
}

// Activate validates the version name and asks the engine to switch to it.
func (m *modelService) Activate(ctx context.Context, req *prefetchv1.ActivateRequest) (*prefetchv1.ActivateResponse, error) {
	if m.s.deps.Models == nil {
		return nil, errNoModels()
	}
	if err := checkID("version", req.GetVersion(), m.s.cfg.MaxIDBytes); err != nil {
		return nil, err
	}
	if err := m.s.deps.Models.Activate(ctx, req.GetVersion()); err != nil {
		m.s.log.WarnContext(ctx, "model activation failed", "version", req.GetVersion(), identity(ctx), "err", err)
		st, _ := toStatus(err)
		return nil, st
	}
	m.s.log.InfoContext(ctx, "model activated", "version", req.GetVersion(), identity(ctx))
	return &prefetchv1.ActivateResponse{Active: req.GetVersion()}, nil
}

// Rollback asks the engine to return to the previous version.
func (m *modelService) Rollback(ctx context.Context, _ *prefetchv1.RollbackRequest) (*prefetchv1.RollbackResponse, error) {
	if m.s.deps.Models == nil {
		return nil, errNoModels()
	}
	v, err := m.s.deps.Models.Rollback(ctx)
	if err != nil {
		m.s.log.WarnContext(ctx, "model rollback failed", identity(ctx), "err", err)
		st, _ := toStatus(err)
		return nil, st
	}
	m.s.log.InfoContext(ctx, "model rolled back", "version", v, identity(ctx))
	return &prefetchv1.RollbackResponse{Active: v}, nil
}
