package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/agent-assembly/agent-assembly/api/openapi"
	"github.com/agent-assembly/agent-assembly/auth"
)

// Operator authentication settings.
const (
	// AuthOn requires an API key (or operator client certificate) with the
	// right role on every operator call.
	AuthOn = "on"
	// AuthOff lets every operator call through (loopback development only).
	AuthOff = "off"
)

// BootstrapKeyEnv holds the bootstrap admin key itself (aak_<id>_<secret>);
// it has no flag, so the key never shows in a process list.
const BootstrapKeyEnv = "AA_BOOTSTRAP_ADMIN_KEY"

// validateAuth checks --auth and the bootstrap key settings: operator
// authentication may be off only while every listener is loopback (or a
// unix socket), whatever --allow-remote says.
func (c *Config) validateAuth() []error {
	var errs []error
	switch c.Auth {
	case AuthOn:
	case AuthOff:
		for _, a := range []struct{ flag, addr string }{{"grpc-addr", c.GRPCAddr}, {"api-addr", c.APIAddr}} {
			if a.addr != "" && !localAddr(a.addr) {
				errs = append(errs, fmt.Errorf("--auth: off is for development on loopback only, and --%s %q is not loopback: use --auth on and an API key", a.flag, a.addr))
			}
		}
	default:
		errs = append(errs, fmt.Errorf("--auth: must be on or off, not %q", c.Auth))
	}
	if c.BootstrapAdminKey != "" && c.BootstrapAdminKeyFile != "" {
		errs = append(errs, fmt.Errorf("--bootstrap-admin-key-file: give the bootstrap key in the file or in $%s, not both", BootstrapKeyEnv))
	}
	if c.BootstrapAdminKey != "" {
		if _, err := auth.ParseKey(c.BootstrapAdminKey); err != nil {
			errs = append(errs, fmt.Errorf("$%s: %v (generate one with: aasm admin key generate)", BootstrapKeyEnv, err))
		}
	}
	return errs
}

// buildAuth creates the operator authenticator and makes sure an admin key
// exists (bootstrapAdmin).
func (s *Server) buildAuth(ctx context.Context) error {
	var err error
	s.auth, err = auth.New(auth.Options{
		Keys: s.store, Disabled: s.cfg.Auth == AuthOff, Audit: s.core, Logger: s.log, Registry: s.reg,
	})
	if err != nil {
		return err
	}
	if s.routes, err = auth.RoutesFromOpenAPI(openapi.JSON, "agentassembly.v1"); err != nil {
		return err
	}
	if s.cfg.Auth == AuthOff {
		s.log.Warn("operator authentication is OFF (--auth off): every caller on loopback is an admin; never use this beyond a development machine")
		return nil
	}
	return s.bootstrapAdmin(ctx)
}

// bootstrapAdmin stores the bootstrap admin key when the store has no
// active admin key: the one given in --bootstrap-admin-key-file or
// $AA_BOOTSTRAP_ADMIN_KEY, else a generated one, shown once on stderr and
// written (0600) to --admin-key-file.
func (s *Server) bootstrapAdmin(ctx context.Context) error {
	// The given key is read only when no admin key exists: once named
	// admin keys are made, the bootstrap Secret or file may be removed.
	given := func() (string, error) {
		f := s.cfg.BootstrapAdminKeyFile
		if f == "" {
			return s.cfg.BootstrapAdminKey, nil
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("--bootstrap-admin-key-file: %w", err)
		}
		k := strings.TrimSpace(string(b))
		if k == "" {
			return "", fmt.Errorf("--bootstrap-admin-key-file: %s is empty; put a key from `aasm admin key generate` in it, or drop the setting to have one generated", f)
		}
		return k, nil
	}
	b, err := auth.EnsureAdmin(ctx, s.store, given, nil)
	if err != nil {
		return err
	}
	if !b.Created {
		return nil
	}
	if b.Generated.ID == "" {
		s.log.Info("bootstrap admin key stored from configuration", "key_id", b.ID)
		return nil
	}
	written := ""
	if f := s.cfg.adminKeyFile(); f != "" {
		if err := writeKeyFile(f, b.Generated.String()); err != nil {
			s.log.Warn("bootstrap admin key not written to a file; copy it from stderr now", "file", f, "err", err)
		} else {
			written = f
		}
	}
	w := s.cfg.KeyOut
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, `
================ agent-assembly bootstrap admin key ================
No admin API key existed, so this one was created. It is shown ONCE.
  %s
`, b.Generated.String())
	if written != "" {
		fmt.Fprintf(w, "It was also written to %s (mode 0600): aasm login --key-file %s\n", written, written)
	}
	fmt.Fprintf(w, `Create named keys with it (aasm admin key create --name NAME --role ROLE),
then revoke it: aasm admin key revoke %s
=====================================================================

`, b.ID)
	s.log.Info("bootstrap admin key created and shown on stderr", "key_id", b.ID, "file", written)
	return nil
}

// writeKeyFile writes key to path with mode 0600, creating its directory
// (0700); a stale file (left from a store that was reset) is replaced.
func writeKeyFile(path, key string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("replace stale key file: %w", err)
		}
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	}
	if err != nil {
		return err
	}
	if _, err := f.WriteString(key + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Authenticator returns the operator authenticator (nil before New finishes).
func (s *Server) Authenticator() *auth.Authenticator { return s.auth }

// adminKeyFile is where a generated bootstrap key is written: AdminKeyFile,
// else admin.key beside the secrets key; "" for "none".
func (c *Config) adminKeyFile() string {
	switch {
	case c.AdminKeyFile == "none":
		return ""
	case c.AdminKeyFile != "":
		return c.AdminKeyFile
	case c.SecretsKeyFile != "":
		return filepath.Join(filepath.Dir(c.SecretsKeyFile), "admin.key")
	}
	return ""
}
