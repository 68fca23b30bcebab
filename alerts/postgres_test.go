package alerts

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/postgres"
	"github.com/agent-assembly/agent-assembly/storage/secretbox"
)

// TestReplicasOnPostgres runs two engines as two gateway replicas on one
// PostgreSQL schema: an event both raise is stored once and delivered
// once, and a watcher on one replica sees the alert the other stored.
func TestReplicasOnPostgres(t *testing.T) {
	url := os.Getenv("AA_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("AA_TEST_POSTGRES_URL is not set: start one with scripts/testdb.sh start")
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "aa_alerts_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, url); err == nil {
			_, _ = c.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
			c.Close(ctx)
		}
	})
	key, err := secretbox.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	box, err := secretbox.New(key)
	if err != nil {
		t.Fatal(err)
	}
	open := func() *postgres.Store {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := postgres.Open(ctx, url, postgres.Options{Schema: schema, Sealer: box})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	rcv := newReceiver(t, 1)
	hook := Webhook{URL: rcv.srv.URL, Secret: secret}
	a := newEngine(t, open(), nil, hook)
	b2 := newEngine(t, open(), nil, hook)
	w, err := b2.Watch(t.Context(), Filter{Kind: KindAuditChainBreak})
	if err != nil {
		t.Fatal(err)
	}
	ev := storage.Alert{ID: ID(KindAuditChainBreak, "replica-a", "42"), Kind: KindAuditChainBreak, Severity: storage.SeverityCritical,
		Summary: "audit chain replica-a is broken at record 42", Source: "audit:replica-a:42"}
	a.Raise(ev)
	b2.Raise(ev)
	got := recvAlert(t, w.C, "watch on the other replica")
	if got.ID != ev.ID {
		t.Fatalf("watch got %s, want %s", got.ID, ev.ID)
	}
	p := recvAlert(t, rcv.got, "webhook")
	if p.ID != ev.ID || rcv.attemptsFor(ev.ID) != 2 {
		t.Fatalf("webhook got %+v after %d attempts, want %s after 2 (one 503)", p, rcv.attemptsFor(ev.ID), ev.ID)
	}
	// Both engines have finished with the event once their queues are empty:
	// close them and count the deliveries.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := value(a.metrics.deliveries.WithLabelValues("delivered")) + value(b2.metrics.deliveries.WithLabelValues("delivered")); n != 1 {
		t.Fatalf("two replicas delivered the alert %v times, want once", n)
	}
	if n := rcv.attemptsFor(ev.ID); n != 2 {
		t.Fatalf("receiver saw %d attempts, want 2", n)
	}
}
