package app

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, c Config)
		wantErr string
	}{
		{
			name: "defaults are the embedded service",
			check: func(t *testing.T, c Config) {
				if !c.Embedded() || c.Replay != ReplayEmbedded || c.Listen != "127.0.0.1:50051" || c.Threshold != 0.5 {
					t.Errorf("defaults = %+v, want embedded replay, listen 127.0.0.1:50051, threshold 0.5", c)
				}
			},
		},
		{
			name: "flags point at real systems",
			args: []string{"--kafka-brokers", "k1:9092, k2:9092", "--topic", "t", "--group", "g", "--redis-addr", "r:6379", "--threshold", "0.25", "--ttl", "1m"},
			check: func(t *testing.T, c Config) {
				if len(c.KafkaBrokers) != 2 || c.KafkaBrokers[1] != "k2:9092" || c.Topic != "t" || c.Group != "g" ||
					c.RedisAddr != "r:6379" || c.Threshold != 0.25 || c.TTL != time.Minute || c.Replay != ReplayNone {
					t.Errorf("config = %+v", c)
				}
			},
		},
		{
			name: "environment fills flags not given",
			args: []string{"--topic", "from-flag"},
			env:  map[string]string{"PREFETCHD_TOPIC": "from-env", "PREFETCHD_KAFKA_BROKERS": "b:1", "PREFETCHD_THRESHOLD": "0.7"},
			check: func(t *testing.T, c Config) {
				if c.Topic != "from-flag" || len(c.KafkaBrokers) != 1 || c.Threshold != 0.7 {
					t.Errorf("config = %+v, want topic from flag, brokers and threshold from env", c)
				}
			},
		},
		{name: "threshold above one", args: []string{"--threshold", "1.5"}, wantErr: "--threshold"},
		{name: "negative ingest batch", args: []string{"--ingest-batch", "-1"}, wantErr: "--ingest-batch"},
		{
			name: "ingest batch",
			env:  map[string]string{"PREFETCHD_INGEST_BATCH": "16"},
			check: func(t *testing.T, c Config) {
				if c.IngestBatch != 16 {
					t.Errorf("IngestBatch = %d, want 16 from PREFETCHD_INGEST_BATCH", c.IngestBatch)
				}
			},
		},
		{name: "bad env value", env: map[string]string{"PREFETCHD_K": "many"}, wantErr: "PREFETCHD_K"},
		{name: "bad listen address", args: []string{"--listen", "nope"}, wantErr: "--listen"},
		{name: "model and repo together", args: []string{"--model", "a", "--model-repo", "b"}, wantErr: "exclusive"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseFlags(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseFlags: %v", err)
			}
			tc.check(t, c)
		})
	}
}
