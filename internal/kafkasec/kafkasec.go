// Package kafkasec builds the TLS and SASL settings of Kafka connections
// from the settings the service and its tools take as flags, so that every
// program that reads the click topic connects the same way.
package kafkasec

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// Config are a Kafka client's security settings.
type Config struct {
	// TLS turns TLS on; CA (a PEM file) turns it on too and is trusted
	// instead of the system roots.
	TLS bool
	CA  string
	// Mechanism is the SASL mechanism: "" (none), PLAIN, SCRAM-SHA-256 or
	// SCRAM-SHA-512, any case; Username and Password are its credentials.
	Mechanism string
	Username  string
	Password  string
}

// Validate reports the settings that do not go together. Messages name the
// flags (--kafka-...) that set them.
func (c Config) Validate() error {
	var errs []error
	switch strings.ToUpper(c.Mechanism) {
	case "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
	default:
		errs = append(errs, fmt.Errorf("--kafka-sasl-mechanism %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.Mechanism))
	}
	if c.Mechanism != "" && c.Username == "" {
		errs = append(errs, errors.New("--kafka-sasl-mechanism needs --kafka-username"))
	}
	if c.Mechanism == "" && (c.Username != "" || c.Password != "") {
		errs = append(errs, errors.New("--kafka-username and --kafka-password need --kafka-sasl-mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"))
	}
	return errors.Join(errs...)
}

// Build returns the TLS configuration (nil: plaintext) and the SASL
// mechanism (nil: none) of c.
func (c Config) Build() (*tls.Config, sasl.Mechanism, error) {
	var (
		tc  *tls.Config
		err error
	)
	if c.TLS || c.CA != "" {
		if tc, err = ClientTLS(c.CA); err != nil {
			return nil, nil, fmt.Errorf("kafka tls: %w", err)
		}
	}
	var mech sasl.Mechanism
	switch strings.ToUpper(c.Mechanism) {
	case "":
	case "PLAIN":
		mech = plain.Mechanism{Username: c.Username, Password: c.Password}
	case "SCRAM-SHA-256":
		mech, err = scram.Mechanism(scram.SHA256, c.Username, c.Password)
	case "SCRAM-SHA-512":
		mech, err = scram.Mechanism(scram.SHA512, c.Username, c.Password)
	default:
		err = fmt.Errorf("mechanism %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.Mechanism)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kafka sasl: %w", err)
	}
	return tc, mech, nil
}

// ClientTLS builds a client TLS configuration trusting caFile (PEM) when
// given, the system roots otherwise.
func ClientTLS(caFile string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return c, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA %s holds no PEM certificate", caFile)
	}
	c.RootCAs = pool
	return c, nil
}
