package kafkasec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfig(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		cfg       Config
		invalid   string // in Validate's error; "" valid
		buildErr  string // in Build's error; "" builds
		tls, sasl bool
	}{
		{"plaintext", Config{}, "", "", false, false},
		{"tls, system roots", Config{TLS: true}, "", "", true, false},
		{"scram, lower case", Config{Mechanism: "scram-sha-512", Username: "u", Password: "p"}, "", "", false, true},
		{"plain over tls", Config{TLS: true, Mechanism: "PLAIN", Username: "u", Password: "p"}, "", "", true, true},
		{"unknown mechanism", Config{Mechanism: "GSSAPI", Username: "u"}, `"GSSAPI" is not PLAIN`, "is not PLAIN", false, false},
		{"mechanism without user", Config{Mechanism: "PLAIN"}, "needs --kafka-username", "", false, true},
		{"password without mechanism", Config{Password: "p"}, "need --kafka-sasl-mechanism", "", false, false},
		{"CA that is not PEM", Config{CA: notPEM}, "", "holds no PEM certificate", false, false},
		{"CA missing", Config{CA: filepath.Join(t.TempDir(), "none.pem")}, "", "read CA", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (tc.invalid == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.invalid)) {
				t.Fatalf("Validate: %v, want %q", err, tc.invalid)
			}
			tlsc, mech, err := tc.cfg.Build()
			if (tc.buildErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.buildErr)) {
				t.Fatalf("Build: %v, want %q", err, tc.buildErr)
			}
			if err == nil && ((tlsc != nil) != tc.tls || (mech != nil) != tc.sasl) {
				t.Fatalf("Build: tls %v, sasl %v; want %v, %v", tlsc != nil, mech != nil, tc.tls, tc.sasl)
			}
		})
	}
}
