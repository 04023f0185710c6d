// Package features is the first stage of prefetchd's pipeline: events in,
// histories out.
//
// It decodes and validates click events in the wire format described in
// EVENTS.md (Decoder), canonicalizes page keys the same way the trainer does
// (Canonicalizer), consumes the clickstream from a Kafka consumer group with
// at-least-once delivery (Consumer), and keeps a bounded per-user history of
// recent page indices with an optional recurrent state (Store, implemented in
// memory by Histories and in Redis by RedisStore). The model stage reads those
// histories to score the next page.
//
//	Kafka topic ──► Consumer ──► Decoder ──► Handler (engine) ──► Store ──► model
//	gRPC Ingest ──► Consumer.Apply ─┘
package features
