package server

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Defaults applied by New to zero fields of Config.
const (
	DefaultMaxRecvMsgSize  = 1 << 20
	DefaultMaxPages        = 100
	DefaultMaxUsers        = 100
	DefaultMaxIDBytes      = 256
	DefaultMaxPageBytes    = 2048
	DefaultDeadline        = 5 * time.Second
	DefaultShutdownTimeout = 10 * time.Second
	DefaultWatchBuffer     = 64
	DefaultMaxWatchers     = 1000
	// MaxStreamsPerConn caps the calls (streams) one client connection
	// may have open at once; more wait in the client until one ends.
	MaxStreamsPerConn = 1000

	// MaxK is the largest k a Predict request may ask for.
	MaxK = 100
)

// Config configures the gRPC server. The zero value is valid: plaintext, no
// admin access, and the defaults above.
type Config struct {
	// MaxRecvMsgSize is the largest request message accepted, in bytes;
	// larger ones get RESOURCE_EXHAUSTED. Default 1 MiB.
	MaxRecvMsgSize int
	// MaxPages is the longest explicit history a Predict request may carry.
	// Default 100.
	MaxPages int
	// MaxUsers is the most users one WatchHints call may watch. Default 100.
	MaxUsers int
	// MaxIDBytes is the longest user, session, event id or model version, in
	// bytes. Default 256.
	MaxIDBytes int
	// MaxPageBytes is the longest page or referrer, in bytes. Default 2048.
	MaxPageBytes int
	// DefaultDeadline bounds unary calls that arrive without a deadline.
	// Default 5 s.
	DefaultDeadline time.Duration
	// ShutdownTimeout bounds the graceful drain when Serve's context ends;
	// remaining calls are then cut. Default 10 s.
	ShutdownTimeout time.Duration
	// WatchBuffer is the number of updates buffered per WatchHints stream
	// before updates for it are dropped. Default 64.
	WatchBuffer int
	// MaxWatchers caps the WatchHints streams open at once, over every
	// client (each holds its buffer and a goroutine, about 90 KB); more
	// get RESOURCE_EXHAUSTED. Default 1,000.
	MaxWatchers int

	// AdminToken is the bearer token that authorizes ModelService calls,
	// usually the content of the file named by --admin-token-file (see
	// ReadSecretFile). Empty disables token authorization.
	AdminToken Secret

	// TLSCertFile and TLSKeyFile are the PEM server certificate and key.
	// Both or neither; neither means plaintext.
	TLSCertFile string
	TLSKeyFile  string
	// TLSClientCAFile is a PEM bundle of CAs that sign client certificates.
	// When set, client certificates are verified if presented (mutual TLS).
	TLSClientCAFile string
	// RequireClientCert rejects connections without a valid client
	// certificate at the TLS handshake. Needs TLSClientCAFile.
	RequireClientCert bool
	// AllowedClientCNs are the common names of verified client certificates
	// that may call ModelService without a bearer token. Needs TLSClientCAFile.
	AllowedClientCNs []string
}

// Validate reports the first invalid field. Zero numeric fields are valid and
// mean the default.
func (c Config) Validate() error {
	nonNeg := []struct {
		name string
		v    int64
	}{
		{"MaxRecvMsgSize", int64(c.MaxRecvMsgSize)},
		{"MaxPages", int64(c.MaxPages)},
		{"MaxUsers", int64(c.MaxUsers)},
		{"MaxIDBytes", int64(c.MaxIDBytes)},
		{"MaxPageBytes", int64(c.MaxPageBytes)},
		{"DefaultDeadline", int64(c.DefaultDeadline)},
		{"ShutdownTimeout", int64(c.ShutdownTimeout)},
		{"WatchBuffer", int64(c.WatchBuffer)},
		{"MaxWatchers", int64(c.MaxWatchers)},
	}
	for _, f := range nonNeg {
		if f.v < 0 {
			return fmt.Errorf("server config: %s must not be negative, got %d", f.name, f.v)
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("server config: TLSCertFile and TLSKeyFile must be set together")
	}
	if c.TLSClientCAFile != "" && c.TLSCertFile == "" {
		return errors.New("server config: TLSClientCAFile needs TLSCertFile and TLSKeyFile")
	}
	if c.RequireClientCert && c.TLSClientCAFile == "" {
		return errors.New("server config: RequireClientCert needs TLSClientCAFile")
	}
	if len(c.AllowedClientCNs) > 0 && c.TLSClientCAFile == "" {
		return errors.New("server config: AllowedClientCNs needs TLSClientCAFile")
	}
	for i, cn := range c.AllowedClientCNs {
		if cn == "" {
			return fmt.Errorf("server config: AllowedClientCNs[%d] is empty", i)
		}
	}
	if strings.TrimSpace(string(c.AdminToken)) != string(c.AdminToken) {
		return errors.New("server config: AdminToken has leading or trailing space")
	}
	return nil
}

// withDefaults returns c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	setInt := func(p *int, d int) {
		if *p == 0 {
			*p = d
		}
	}
	setDur := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	setInt(&c.MaxRecvMsgSize, DefaultMaxRecvMsgSize)
	setInt(&c.MaxPages, DefaultMaxPages)
	setInt(&c.MaxUsers, DefaultMaxUsers)
	setInt(&c.MaxIDBytes, DefaultMaxIDBytes)
	setInt(&c.MaxPageBytes, DefaultMaxPageBytes)
	setInt(&c.WatchBuffer, DefaultWatchBuffer)
	setInt(&c.MaxWatchers, DefaultMaxWatchers)
	setDur(&c.DefaultDeadline, DefaultDeadline)
	setDur(&c.ShutdownTimeout, DefaultShutdownTimeout)
	return c
}

// Secret is a string that never prints: fmt, slog and text/JSON encoders all
// see "[redacted]". Convert with string(s) where the value is really needed.
type Secret string

const redacted = "[redacted]"

// String returns "[redacted]".
func (Secret) String() string { return redacted }

// GoString returns "[redacted]".
func (Secret) GoString() string { return redacted }

// LogValue returns "[redacted]" for log/slog.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText returns "[redacted]" for encoders.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// ReadSecretFile reads a secret such as the admin token from path, trimming
// surrounding white space. An empty file is an error. The error never holds
// the file's content.
func ReadSecretFile(path string) (Secret, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("read secret file %s: empty", path)
	}
	return Secret(s), nil
}
