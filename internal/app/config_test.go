package app

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/cli"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
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
		{name: "value out of range from the environment names the variable", env: map[string]string{"PREFETCHD_K": "0"}, wantErr: "--k (PREFETCHD_K) 0"},
		{name: "value out of range on the command line names the flag alone", args: []string{"--k", "0"}, env: map[string]string{"PREFETCHD_KAFKA_BROKERS": "b:1"}, wantErr: "--k 0"},
		{name: "bad listen address", args: []string{"--listen", "nope"}, wantErr: "--listen"},
		{name: "listen port out of range", args: []string{"--listen", "127.0.0.1:99999"}, wantErr: "not a number from 0 to 65535"},
		{name: "admin port out of range", args: []string{"--admin-listen", "127.0.0.1:-1"}, wantErr: "--admin-listen"},
		{name: "model and repo together", args: []string{"--model", "a", "--model-repo", "b"}, wantErr: "exclusive"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected"},
		{name: "misspelled variable", env: map[string]string{"PREFETCHD_TRESHOLD": "0.2"}, wantErr: "unknown environment variable PREFETCHD_TRESHOLD (did you mean PREFETCHD_THRESHOLD?)"},
		{name: "help", args: []string{"--help"}, wantErr: "help or version printed"},
		{
			name: "warmer and overload flags",
			args: []string{"--warm-queue", "100", "--warm-workers", "8", "--warm-pipeline", "64", "--warm-backpressure=false", "--warm-shed-from", "0.9", "--overload-lag", "3s"},
			check: func(t *testing.T, c Config) {
				if c.WarmQueue != 100 || c.WarmWorkers != 8 || c.WarmPipeline != 64 || c.WarmBackpressure || c.WarmShedFrom != 0.9 || c.OverloadLag != 3*time.Second {
					t.Errorf("config = %+v, want warm queue 100, 8 workers, pipelines of 64, no backpressure, shed from 0.9, overload lag 3s", c)
				}
			},
		},
		{name: "shed from above one", args: []string{"--warm-shed-from", "1.5"}, wantErr: "--warm-shed-from"},
		{name: "negative overload lag", args: []string{"--overload-lag", "-1s"}, wantErr: "--overload-lag"},
		{name: "dead letters to the click topic", args: []string{"--topic", "c", "--dead-letter-topic", "c"}, wantErr: "--dead-letter-topic \"c\" is the click topic"},
		{name: "kafka user without a mechanism", args: []string{"--kafka-username", "u"}, wantErr: "need --kafka-sasl-mechanism"},
		{name: "kafka password without a mechanism", env: map[string]string{"PREFETCHD_KAFKA_PASSWORD": "p"}, wantErr: "need --kafka-sasl-mechanism"},
		{name: "origin URL without origin mode", args: []string{"--origin-url", "http://o/{page}"}, wantErr: "--origin-url is fetched only with --prefetch-mode origin"},
		{name: "origin URL without page", args: []string{"--prefetch-mode", "origin", "--origin-url", "http://o/x"}, wantErr: "--origin-url lacks {page}"},
		{name: "origin URL not http", args: []string{"--prefetch-mode", "origin", "--origin-url", "ftp://o/{page}"}, wantErr: "http:// or https://"},
		{name: "replay rate NaN", args: []string{"--replay-rate", "NaN"}, wantErr: "--replay-rate NaN outside"},
		{name: "replay rate infinite", args: []string{"--replay-rate", "+Inf"}, wantErr: "--replay-rate +Inf outside"},
		{name: "replay rate too high", args: []string{"--replay-rate", "2e9"}, wantErr: "--replay-rate 2e+09 outside"},
		{name: "global rate NaN", args: []string{"--global-rate", "NaN"}, wantErr: "must be finite"},
		{name: "per-user rate infinite", args: []string{"--per-user-rate", "Inf"}, wantErr: "must be finite"},
		{name: "broker without a port", args: []string{"--kafka-brokers", "kafka1"}, wantErr: `--kafka-brokers: "kafka1" is not host:port`},
		{name: "redis port out of range", args: []string{"--redis-addr", "r:70000"}, wantErr: `--redis-addr: "r:70000": the port is not a number from 1 to 65535`},
		{name: "one bad redis cluster seed", args: []string{"--redis-addr", "r1:7000,r2"}, wantErr: `--redis-addr: "r2" is not host:port`},
		{
			name: "redis cluster seeds",
			args: []string{"--redis-addr", "r1:7000,r2:7001"},
			check: func(t *testing.T, c Config) {
				if c.RedisAddr != "r1:7000,r2:7001" {
					t.Errorf("RedisAddr = %q", c.RedisAddr)
				}
			},
		},
		{name: "state redis without the redis store", args: []string{"--state-redis-addr", "s:6379"}, wantErr: "--state-redis-addr needs --history-store redis"},
		{
			name: "state redis apart",
			args: []string{"--history-store", "redis", "--redis-addr", "c:6379"},
			env:  map[string]string{"PREFETCHD_STATE_REDIS_ADDR": "s:6379"},
			check: func(t *testing.T, c Config) {
				if c.StateRedisAddr != "s:6379" || c.RedisAddr != "c:6379" {
					t.Errorf("config = %+v, want state Redis s:6379 from PREFETCHD_STATE_REDIS_ADDR, cache Redis c:6379", c)
				}
			},
		},
		{name: "kafka mechanism without a user", args: []string{"--kafka-sasl-mechanism", "PLAIN"}, wantErr: "needs --kafka-username"},
		// Values that would crash or exhaust the process after start.
		{name: "session timeout beyond the protocol", args: []string{"--kafka-session-timeout", "597h"}, wantErr: "--kafka-session-timeout 597h0m0s above"},
		{name: "huge warm queue", args: []string{"--warm-queue", "1099511627776"}, wantErr: "--warm-queue 1099511627776 above"},
		{name: "huge ingest batch", args: []string{"--ingest-batch", "1000000000000"}, wantErr: "--ingest-batch 1000000000000 above"},
		{name: "huge worker count", args: []string{"--workers", "100000000"}, wantErr: "--workers 100000000 above"},
		{name: "ttl below a millisecond", args: []string{"--ttl", "500us"}, wantErr: "--ttl 500µs below 1ms"},
		{name: "empty model name", args: []string{"--model-name="}, wantErr: "--model-name is empty"},
		{name: "zero idle TTL", args: []string{"--history-idle-ttl", "0s"}, wantErr: "--history-idle-ttl 0s is not positive"},
		{name: "zero origin timeout", args: []string{"--origin-timeout", "0s"}, wantErr: "--origin-timeout 0s is not positive"},
		{name: "negative duration quoted with its unit", args: []string{"--session-gap", "-90m"}, wantErr: "--session-gap -1h30m0s is not positive"},
		{name: "origin body over Redis's limit", args: []string{"--origin-max-body", "1073741824"}, wantErr: "--origin-max-body 1073741824 above"},
		{name: "negative byte budget", args: []string{"--budget-bytes", "-1"}, wantErr: "--budget-bytes -1 is negative"},
		{
			name: "origin limits",
			args: []string{"--origin-timeout", "500ms", "--origin-max-body", "65536", "--origin-concurrency", "2", "--budget-bytes", "0"},
			check: func(t *testing.T, c Config) {
				if c.OriginTimeout != 500*time.Millisecond || c.OriginMaxBody != 65536 || c.OriginConcurrency != 2 || c.BudgetBytes != 0 {
					t.Errorf("config %+v, want the origin limits given", c)
				}
			},
		},
		{name: "negative key budget from the environment", env: map[string]string{"PREFETCHD_BUDGET_KEYS": "-1"}, wantErr: "--budget-keys (PREFETCHD_BUDGET_KEYS) -1 is negative"},
		{name: "negative global rate", args: []string{"--global-rate", "-1"}, wantErr: "--global-rate -1 is negative"},
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

// TestAddressURLNotEchoed: an address given as a URL with a password is
// refused without the password appearing in the error.
func TestAddressURLNotEchoed(t *testing.T) {
	for _, args := range [][]string{
		{"--redis-addr", "redis://:SECRETREDIS@127.0.0.1:6379"},
		{"--kafka-brokers", "kafka://bob:SECRETKAFKA@127.0.0.1:9092"},
		{"--history-store", "redis", "--redis-addr", "127.0.0.1:6379", "--state-redis-addr", "u:SECRETSTATE@127.0.0.1:6380"},
		{"--redis-addr", "127.0.0.1:6379?password=SECRETQUERY"},
	} {
		_, err := ParseFlags(args, nil, io.Discard)
		if err == nil || !strings.Contains(err.Error(), args[len(args)-2]+": ") || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("%v: err %v, want the flag named and no secret", args, err)
		}
	}
}

// TestOnlineByDefault: the online statistics are on unless --online=false
// (or PREFETCHD_ONLINE=false) turns them off; the command line wins over
// the environment.
func TestOnlineByDefault(t *testing.T) {
	for _, c := range []struct {
		name   string
		args   []string
		getenv []string
		want   bool
	}{
		{"default", nil, nil, true},
		{"flag off", []string{"--online=false"}, nil, false},
		{"flag on", []string{"--online"}, nil, true},
		{"environment off", nil, []string{"PREFETCHD_ONLINE=false"}, false},
		{"flag over environment", []string{"--online=true"}, []string{"PREFETCHD_ONLINE=false"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseFlags(c.args, c.getenv, io.Discard)
			if err != nil {
				t.Fatalf("ParseFlags(%q, env %q): %v", c.args, c.getenv, err)
			}
			if cfg.Online != c.want {
				t.Errorf("ParseFlags(%q, env %q).Online = %v, want %v", c.args, c.getenv, cfg.Online, c.want)
			}
		})
	}
}

// TestZeroIsAValue goes through every numeric flag: unset gives the
// default, and 0 is either honoured or refused with an error naming the
// flag, never silently replaced by the default.
func TestZeroIsAValue(t *testing.T) {
	def := Default()
	tests := []struct {
		flag    string
		unset   func(Config) bool // the default applies when the flag is not given
		zero    func(Config) bool // nil: 0 is refused
		wantErr string
	}{
		{flag: "threshold", unset: func(c Config) bool { return c.Threshold == 0.5 }, zero: func(c Config) bool { return c.Threshold == 0 }},
		{flag: "global-rate", unset: func(c Config) bool { return c.GlobalRate == 0 }, zero: func(c Config) bool { return c.GlobalRate == 0 }},
		{flag: "per-user-rate", unset: func(c Config) bool { return c.PerUserRate == 0 }, zero: func(c Config) bool { return c.PerUserRate == 0 }},
		{flag: "budget-keys", unset: func(c Config) bool { return c.BudgetKeys == 0 }, zero: func(c Config) bool { return c.BudgetKeys == 0 }},
		{flag: "k", unset: func(c Config) bool { return c.K == 3 }, wantErr: "--k"},
		{flag: "ttl", unset: func(c Config) bool { return c.TTL == def.TTL }, wantErr: "--ttl"},
		{flag: "workers", unset: func(c Config) bool { return c.Workers == 4 }, wantErr: "--workers"},
		{flag: "ingest-batch", unset: func(c Config) bool { return c.IngestBatch == 64 }, wantErr: "--ingest-batch"},
		{flag: "event-id-cache", unset: func(c Config) bool { return c.EventIDCache == 100_000 }, wantErr: "--event-id-cache"},
		{flag: "commit-interval", unset: func(c Config) bool { return c.CommitInterval == time.Second }, wantErr: "--commit-interval"},
		{flag: "commit-batch", unset: func(c Config) bool { return c.CommitBatch == 5000 }, wantErr: "--commit-batch"},
		{flag: "max-skew", unset: func(c Config) bool { return c.MaxSkew == 24*time.Hour }, wantErr: "--max-skew"},
		{flag: "history-max-users", unset: func(c Config) bool { return c.HistoryMaxUsers == 1<<20 }, wantErr: "--history-max-users"},
		{flag: "session-gap", unset: func(c Config) bool { return c.SessionGap == 30*time.Minute }, wantErr: "--session-gap"},
		{flag: "rollback-min-fraction", unset: func(c Config) bool { return c.RollbackMinFraction == 0.5 }, wantErr: "--rollback-min-fraction"},
		{flag: "rollback-window", unset: func(c Config) bool { return c.RollbackWindow == 10*time.Minute }, wantErr: "--rollback-window"},
		{flag: "replay-rate", unset: func(c Config) bool { return c.ReplayRate == 200 }, wantErr: "--replay-rate"},
		{flag: "online-evidence", unset: func(c Config) bool { return c.OnlineEvidence == 50 }, zero: func(c Config) bool { return c.OnlineEvidence == 0 }},
		{flag: "online-half-life", unset: func(c Config) bool { return c.OnlineHalfLife == time.Hour }, wantErr: "--online-half-life"},
		{flag: "online-max-pages", unset: func(c Config) bool { return c.OnlineMaxPages == 100_000 }, wantErr: "--online-max-pages"},
		{flag: "online-max-next", unset: func(c Config) bool { return c.OnlineMaxNext == 32 }, wantErr: "--online-max-next"},
		{flag: "warm-queue", unset: func(c Config) bool { return c.WarmQueue == DefaultWarmQueue }, wantErr: "--warm-queue"},
		{flag: "warm-workers", unset: func(c Config) bool { return c.WarmWorkers == DefaultWarmWorkers }, wantErr: "--warm-workers"},
		{flag: "warm-pipeline", unset: func(c Config) bool { return c.WarmPipeline == DefaultWarmPipeline }, wantErr: "--warm-pipeline"},
		{flag: "warm-shed-from", unset: func(c Config) bool { return c.WarmShedFrom == DefaultWarmShedFrom }, zero: func(c Config) bool { return c.WarmShedFrom == 0 }},
		{flag: "overload-lag", unset: func(c Config) bool { return c.OverloadLag == DefaultOverloadLag }, zero: func(c Config) bool { return c.OverloadLag == 0 }},
	}
	var getenv []string
	for _, tc := range tests {
		t.Run(tc.flag, func(t *testing.T) {
			c, err := ParseFlags(nil, getenv, io.Discard)
			if err != nil {
				t.Fatalf("ParseFlags without --%s: %v", tc.flag, err)
			}
			if !tc.unset(c) {
				t.Errorf("without --%s: config %+v, want the default", tc.flag, c)
			}
			c, err = ParseFlags([]string{"--" + tc.flag, "0"}, getenv, io.Discard)
			if tc.zero == nil {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("--%s 0: err %v, want one naming %s", tc.flag, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("--%s 0: %v", tc.flag, err)
			}
			if !tc.zero(c) {
				t.Errorf("--%s 0: config %+v, want 0 kept", tc.flag, c)
			}
		})
	}
}

// TestThresholdZeroService runs the service with --threshold 0 and --k 3:
// a hint query that leaves the threshold to the service gets 3 hints, which
// the default threshold of 0.5 could never give (probabilities sum to 1, so
// at most two pages are at or above 0.5).
func TestThresholdZeroService(t *testing.T) {
	cfg, err := ParseFlags([]string{"--threshold", "0", "--k", "3", "--replay", "none",
		"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	svc := startService(t, cfg, 60*time.Second)
	conn, err := grpc.NewClient(svc.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial gRPC: %v", err)
	}
	defer conn.Close()
	resp, err := prefetchv1.NewHintServiceClient(conn).Predict(svc.ctx, &prefetchv1.PredictRequest{Pages: []string{"/page/1"}})
	if err != nil {
		t.Fatalf("Predict: %v", err)
	}
	if len(resp.Hints) != 3 {
		t.Fatalf("hints %v, want 3 (threshold 0 admits every page, k 3)", resp.Hints)
	}
	below := 0
	for _, h := range resp.Hints {
		if h.Probability < 0.5 {
			below++
		}
	}
	if below == 0 {
		t.Errorf("hints %v: none below 0.5, want at least one", resp.Hints)
	}
	svc.shutdown(t)
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
