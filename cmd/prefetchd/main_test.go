package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestRunFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
		wantOut string
	}{
		{name: "help", args: []string{"--help"}, wantOut: "-kafka-brokers string"},
		{name: "unknown flag", args: []string{"--nope"}, wantErr: "not defined"},
		{name: "bad threshold from env", env: map[string]string{"PREFETCHD_THRESHOLD": "2"}, wantErr: "--threshold"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantErr: "--log-level"},
		{name: "missing model", args: []string{"--model", "no/such/bundle", "--kafka-brokers", "127.0.0.1:1", "--redis-addr", "127.0.0.1:1"}, wantErr: "load model"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out bytes.Buffer
			err := run(ctx, tc.args, func(k string) string { return tc.env[k] }, &out)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("output lacks %q:\n%s", tc.wantOut, out.String())
			}
		})
	}
}
