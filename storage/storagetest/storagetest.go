// Package storagetest is the conformance suite every storage driver passes.
//
// A driver that implements all of storage.Store calls Run from its tests:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T) storage.Store {
//			s, err := mydriver.Open(...)
//			if err != nil { t.Fatal(err) }
//			t.Cleanup(func() { s.Close() })
//			return s
//		}, storagetest.Reopen(func(t *testing.T, s storage.Store) storage.Store { ... }))
//	}
//
// A driver that implements only some parts (redis: Counters and Notifier)
// calls the matching entry points (RunCounters, RunNotifier) with a factory
// for that part. Every factory must return an instance on a fresh, empty
// backend (or one it has emptied) and register its own cleanup.
//
// Options add the cases that need to reach behind the interface: Reopen for a
// second instance on the same backend (a second gateway replica), TamperAudit
// to change a stored byte, RawSecrets to read what is stored at rest.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// Option adds driver-specific hooks to the suite.
type Option func(*config)

type config struct {
	reopen     func(t *testing.T, p any) any
	tamper     func(t *testing.T, p any, chain string, seq int64)
	rawSecrets func(t *testing.T, p any) [][]byte
}

func newConfig(opts []Option) *config {
	c := &config{}
	for _, o := range opts {
		o(c)
	}
	return c
}

// asPart converts what a factory returned to the type a hook was written
// for, failing the test with a clear message when it does not fit.
func asPart[P any](t *testing.T, hook string, p any) P {
	t.Helper()
	v, ok := p.(P)
	if !ok {
		var want P
		t.Fatalf("storagetest: %s hook takes %T, but the factory returned %T", hook, &want, p)
	}
	return v
}

// Reopen enables the shared-backend cases: f returns a second instance on the
// same backend as p, as a second gateway replica would open it, and registers
// its cleanup. P is the type the factory returns (storage.Store for Run, or
// the driver's own type for the partial entry points). Without Reopen those
// cases are skipped.
func Reopen[P any](f func(t *testing.T, p P) P) Option {
	return func(c *config) {
		c.reopen = func(t *testing.T, p any) any {
			t.Helper()
			return f(t, asPart[P](t, "Reopen", p))
		}
	}
}

// TamperAudit enables the tamper-detection cases: f changes one stored byte
// of the content of record seq of chain (not its hash) directly in the
// backend, bypassing the driver's API. VerifyAudit must then name that record.
func TamperAudit[P any](f func(t *testing.T, p P, chain string, seq int64)) Option {
	return func(c *config) {
		c.tamper = func(t *testing.T, p any, chain string, seq int64) {
			t.Helper()
			f(t, asPart[P](t, "TamperAudit", p), chain, seq)
		}
	}
}

// RawSecrets enables the encryption-at-rest case: f returns every byte the
// backend stores for secrets (rows, files, keys), read directly. None of it
// may contain a plaintext value.
func RawSecrets[P any](f func(t *testing.T, p P) [][]byte) Option {
	return func(c *config) {
		c.rawSecrets = func(t *testing.T, p any) [][]byte {
			t.Helper()
			return f(t, asPart[P](t, "RawSecrets", p))
		}
	}
}

// Run runs every part of the suite against stores from newStore.
func Run(t *testing.T, newStore func(t *testing.T) storage.Store, opts ...Option) {
	t.Run("Audit", func(t *testing.T) {
		RunAudit(t, func(t *testing.T) storage.AuditLog { return newStore(t) }, opts...)
	})
	t.Run("Agents", func(t *testing.T) {
		RunAgents(t, func(t *testing.T) storage.AgentRegistry { return newStore(t) }, opts...)
	})
	t.Run("Policies", func(t *testing.T) {
		RunPolicies(t, func(t *testing.T) storage.PolicyStore { return newStore(t) }, opts...)
	})
	t.Run("Counters", func(t *testing.T) {
		RunCounters(t, func(t *testing.T) storage.Counters { return newStore(t) }, opts...)
	})
	t.Run("Approvals", func(t *testing.T) {
		RunApprovals(t, func(t *testing.T) storage.Approvals { return newStore(t) }, opts...)
	})
	t.Run("Secrets", func(t *testing.T) {
		RunSecrets(t, func(t *testing.T) storage.Secrets { return newStore(t) }, opts...)
	})
	t.Run("Invalidations", func(t *testing.T) {
		RunInvalidations(t, func(t *testing.T) storage.InvalidationLog { return newStore(t) }, opts...)
	})
	t.Run("Alerts", func(t *testing.T) { RunAlerts(t, newStore, opts...) })
	t.Run("Notifier", func(t *testing.T) {
		RunNotifier(t, func(t *testing.T) storage.Notifier { return newStore(t) }, opts...)
	})
	t.Run("APIKeys", func(t *testing.T) { RunAPIKeys(t, func(t *testing.T) storage.APIKeys { return newStore(t) }, opts...) })
	t.Run("Ping", func(t *testing.T) {
		s := newStore(t)
		if err := s.Ping(testContext(t)); err != nil {
			t.Fatalf("Ping: %v", err)
		}
	})
}

// second returns another instance on p's backend, or skips the test.
func second[P any](t *testing.T, c *config, p P) P {
	t.Helper()
	if c.reopen == nil {
		t.Skip("driver provides no storagetest.Reopen hook: shared-backend case skipped")
	}
	return asPart[P](t, "Reopen", c.reopen(t, p))
}

// testContext returns a context that ends with the test or after 30 s.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func check(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func checkIs(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want one matching %v", what, err, want)
	}
}

// base is a fixed instant with microsecond precision, so every backend can
// store it exactly; audit cases add nanoseconds on purpose.
var base = time.Date(2026, 11, 25, 9, 30, 0, 0, time.UTC)

// uniq returns a name no earlier test run used, for backends that keep data.
func uniq(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
}

// recv waits for one value from ch, failing the test after d.
func recv[T any](t *testing.T, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatalf("%s: channel closed", what)
		}
		return v
	case <-time.After(d):
		t.Fatalf("%s: nothing received within %v", what, d)
	}
	var zero T
	return zero
}

// quiet asserts that ch delivers nothing within d.
func quiet[T any](t *testing.T, ch <-chan T, d time.Duration, what string) {
	t.Helper()
	select {
	case v, ok := <-ch:
		if ok {
			t.Fatalf("%s: unexpected delivery %v", what, v)
		}
	case <-time.After(d):
	}
}

// closes asserts that ch is closed within d (values still buffered are drained).
func closes[T any](t *testing.T, ch <-chan T, d time.Duration, what string) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatalf("%s: channel not closed within %v after its context ended", what, d)
		}
	}
}
