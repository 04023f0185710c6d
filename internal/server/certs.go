package server

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certReloadEvery bounds how often the certificate files are checked.
const certReloadEvery = time.Second

// keyPair serves the server's certificate from its PEM files and picks up a
// rotated pair without a restart: on a handshake, at most once per
// certReloadEvery, it reads the two files and loads the pair again when
// either differs from what is in service. A pair that fails to load (for
// example a certificate already written but its key not yet) leaves the
// previous one in service and is retried at the next check.
type keyPair struct {
	certFile, keyFile string
	log               *slog.Logger
	reloads           func(result string) // counts reloads by result

	mu              sync.Mutex
	cert            *tls.Certificate
	certPEM, keyPEM []byte // the files' contents behind cert, or the last broken pair
	checked         time.Time
}

// newKeyPair loads the pair once; an error here is a configuration error.
func newKeyPair(certFile, keyFile string, log *slog.Logger, reloads func(string)) (*keyPair, error) {
	k := &keyPair{certFile: certFile, keyFile: keyFile, log: log, reloads: reloads}
	certPEM, keyPEM, err := k.read()
	if err == nil {
		err = k.load(certPEM, keyPEM)
	}
	if err != nil {
		return nil, fmt.Errorf("server: load TLS key pair: %w", err)
	}
	k.certPEM, k.keyPEM = certPEM, keyPEM
	k.checked = time.Now()
	return k, nil
}

func (k *keyPair) read() (certPEM, keyPEM []byte, err error) {
	if certPEM, err = os.ReadFile(k.certFile); err != nil {
		return nil, nil, err
	}
	if keyPEM, err = os.ReadFile(k.keyFile); err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

func (k *keyPair) load(certPEM, keyPEM []byte) error {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	k.cert = &cert
	return nil
}

// get is tls.Config.GetCertificate.
func (k *keyPair) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := time.Now()
	if now.Sub(k.checked) < certReloadEvery {
		return k.cert, nil
	}
	k.checked = now
	certPEM, keyPEM, err := k.read()
	if err != nil || bytes.Equal(certPEM, k.certPEM) && bytes.Equal(keyPEM, k.keyPEM) {
		return k.cert, nil // unreadable now (mid-rotation) or unchanged
	}
	k.certPEM, k.keyPEM = certPEM, keyPEM
	if err := k.load(certPEM, keyPEM); err != nil {
		k.log.Warn("TLS certificate not reloaded; the previous one stays in service", "cert", k.certFile, "err", err)
		k.reloads("failed")
		return k.cert, nil
	}
	k.log.Info("TLS certificate reloaded", "cert", k.certFile)
	k.reloads("ok")
	return k.cert, nil
}
