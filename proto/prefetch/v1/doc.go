// Package prefetchv1 is the generated Go code of prefetch.proto, the wire
// contract between prefetchd and its callers: HintService (Predict,
// WatchHints, Ingest, Ping) and ModelService (Status, Activate, Rollback).
//
// Regenerate with `make proto` (proto/gen.sh); never edit the .pb.go files.
package prefetchv1
