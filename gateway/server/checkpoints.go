package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/storage"
)

// checkpointKeySecret is the store secret holding the audit checkpoint
// signing key's seed, sealed with --secrets-key-file like every secret, so
// whoever can rewrite the database cannot sign. Every replica signs with it.
const checkpointKeySecret = "aa.audit-checkpoint-key"

// loadCheckpointSigner loads the checkpoint signing key, creating it on the
// first start. It is loaded even when checkpoints are off, so that the
// checkpoints already in the log still verify against it.
func (s *Server) loadCheckpointSigner(ctx context.Context) error {
	kctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	seed, err := identity.LoadOrCreateSeed(kctx, s.store, checkpointKeySecret, "audit checkpoint key")
	if err != nil {
		return err
	}
	s.checkpoints, err = storage.NewCheckpointSigner(seed)
	return err
}

// checkpointer appends signed checkpoints to this replica's audit chain.
type checkpointer struct {
	s    *Server
	mu   sync.Mutex
	seen int64 // Seq of the last checkpoint this process appended (0: none)
	// written counts checkpoint appends by result (ok, error).
	written *prometheus.CounterVec
}

// newCheckpointer returns the checkpointer of s, its metrics registered.
func newCheckpointer(s *Server) *checkpointer {
	c := &checkpointer{s: s, written: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "aa", Name: "audit_checkpoints_total",
		Help: "Signed checkpoints appended to this replica's audit chain (--audit-checkpoint-interval), by result (ok, error); a growing error count leaves records unsigned.",
	}, []string{"result"})}
	for _, r := range []string{"ok", "error"} {
		c.written.WithLabelValues(r)
	}
	s.reg.MustRegister(c.written)
	return c
}

// runCheckpoints appends a checkpoint every AuditCheckpointInterval in which
// records were written, until ctx ends.
func (s *Server) runCheckpoints(ctx context.Context, wg *sync.WaitGroup) {
	if s.cfg.AuditCheckpointInterval > 0 {
		every(ctx, wg, s.cfg.AuditCheckpointInterval, func() {
			if err := s.checkpointer.checkpoint(ctx); err != nil {
				s.log.Warn("append audit checkpoint; retrying at the next interval", "err", err)
			}
		})
	}
}

// every runs fn every interval on a goroutine of wg until ctx ends.
func every(ctx context.Context, wg *sync.WaitGroup, interval time.Duration, fn func()) {
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				fn()
			}
		}
	})
}

// checkpoint appends a signed checkpoint if records were written since the
// last one. It is safe for concurrent use.
func (c *checkpointer) checkpoint(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The chain's records are ordered by Seq, so a checkpoint is needed
	// exactly when the last record written is not the last checkpoint:
	// a record that lands while a checkpoint is appended and before it is
	// covered by it, one that lands after it is not.
	if c.s.writer.LastSeq() == c.seen {
		return nil
	}
	rec := c.s.checkpoints.Record(c.s.cfg.ReplicaName(), uuid.NewString(), time.Now())
	actx, cancel := context.WithTimeout(ctx, c.s.cfg.AuditTimeout)
	defer cancel()
	if err := c.s.writer.Append(actx, rec); err != nil {
		c.written.WithLabelValues("error").Inc()
		return fmt.Errorf("checkpoint audit chain %s: %w", c.s.cfg.ReplicaName(), err)
	}
	c.written.WithLabelValues("ok").Inc()
	c.seen = rec.Seq
	return nil
}
