package app

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/cli"
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
		{name: "misspelled variable", env: map[string]string{"PREFETCHD_TRESHOLD": "0.2"}, wantErr: "unknown environment variable PREFETCHD_TRESHOLD (did you mean PREFETCHD_THRESHOLD?)"},
		{name: "help", args: []string{"--help"}, wantErr: "help or version printed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseFlags(tc.args, environ(tc.env), io.Discard)
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

// environ turns a map into os.Environ's form.
func environ(env map[string]string) []string {
	var out []string
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// TestParseFlagsHelp checks that --help goes to stdout and names each flag's
// environment variable.
func TestParseFlagsHelp(t *testing.T) {
	var out strings.Builder
	_, err := ParseFlags([]string{"--help"}, nil, &out)
	if !errors.Is(err, cli.ErrPrinted) {
		t.Fatalf("ParseFlags(--help) = %v, want cli.ErrPrinted", err)
	}
	for _, want := range []string{"usage: prefetchd", "--kafka-brokers string  [$PREFETCHD_KAFKA_BROKERS]", "--threshold float  [$PREFETCHD_THRESHOLD]", "(default 0.5)", "--version"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}
