package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// validateTLS checks the TLS settings: a certificate and its key come
// together, and client certificates need a server certificate.
func (c *Config) validateTLS() []error {
	var errs []error
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key: give both (the server certificate and its private key) or neither"))
	}
	if c.TLSClientCAFile != "" && c.TLSCertFile == "" {
		errs = append(errs, errors.New("--tls-client-ca: client certificates need TLS: set --tls-cert and --tls-key too"))
	}
	return errs
}

// TLSEnabled reports whether the listeners serve TLS.
func (c *Config) TLSEnabled() bool { return c.TLSCertFile != "" }

// serverTLS builds the TLS configuration both listeners use: TLS 1.2 or
// later, the certificate re-read when its files change (so a renewed
// certificate needs no restart), and client certificates verified against
// the client CA when one is configured and the client offers one
// (VerifyClientCertIfGiven: operators may use API keys instead, agents
// tokens).
func serverTLS(cfg Config) (*tls.Config, error) {
	if !cfg.TLSEnabled() {
		return nil, nil
	}
	kp := &keyPair{cert: cfg.TLSCertFile, key: cfg.TLSKeyFile}
	if err := kp.load(); err != nil {
		return nil, err
	}
	tc := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: kp.get,
		NextProtos:     []string{"h2", "http/1.1"},
	}
	if cfg.TLSClientCAFile != "" {
		pem, err := os.ReadFile(cfg.TLSClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-client-ca: read: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-client-ca: %s holds no PEM certificate", cfg.TLSClientCAFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

// keyPair is a certificate and key re-read from their files when the
// certificate file's modification time changes (checked at most every
// 10 s, on a handshake).
type keyPair struct {
	cert, key string
	mu        sync.Mutex
	loaded    *tls.Certificate
	mtime     time.Time
	checked   time.Time
}

func (k *keyPair) load() error {
	st, err := os.Stat(k.cert)
	if err != nil {
		return fmt.Errorf("--tls-cert: %w", err)
	}
	c, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		return fmt.Errorf("--tls-cert/--tls-key: load key pair: %w", err)
	}
	k.loaded, k.mtime, k.checked = &c, st.ModTime(), time.Now()
	return nil
}

func (k *keyPair) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if time.Since(k.checked) > 10*time.Second {
		k.checked = time.Now()
		if st, err := os.Stat(k.cert); err == nil && !st.ModTime().Equal(k.mtime) {
			old := k.loaded
			if err := k.load(); err != nil {
				k.loaded = old // keep serving the certificate that worked
			}
		}
	}
	return k.loaded, nil
}
