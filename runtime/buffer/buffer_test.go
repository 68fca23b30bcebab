package buffer

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

func ev(reason string) *v1.ReportedEvent {
	return &v1.ReportedEvent{Layer: v1.Layer_LAYER_RUNTIME, Reason: reason}
}

// TestOrderAcrossReopen: events keep their order and ids across a reopen;
// acked ones are gone; the reporter id is stable.
func TestOrderAcrossReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "events.db")
	b, err := Open(ctx, path, "test/")
	if err != nil {
		t.Fatal(err)
	}
	reporter := b.Reporter()
	for i := range 5 {
		if err := b.Append(ctx, ev(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Enqueue(ev("5"), ev("6")); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil { // writes what was enqueued
		t.Fatal(err)
	}
	if err := b.Append(ctx, ev("x")); err != ErrClosed {
		t.Fatalf("append after close: %v", err)
	}

	b, err = Open(ctx, path, "test/")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Reporter() != reporter {
		t.Fatalf("reporter %q after reopen, was %q", b.Reporter(), reporter)
	}
	if b.Len() != 7 {
		t.Fatalf("len %d, want 7", b.Len())
	}
	es, err := b.Peek(ctx, 3)
	if err != nil || len(es) != 3 {
		t.Fatalf("peek: %v %v", es, err)
	}
	for i, e := range es {
		if e.Event.GetReason() != strconv.Itoa(i) || e.Event.GetEventId() != strconv.FormatInt(e.Seq, 10) {
			t.Fatalf("entry %d: %v", i, e)
		}
	}
	if err := b.Ack(ctx, es[2].Seq); err != nil {
		t.Fatal(err)
	}
	es, _ = b.Peek(ctx, 100)
	if len(es) != 4 || es[0].Event.GetReason() != "3" || es[3].Event.GetReason() != "6" || b.Len() != 4 {
		t.Fatalf("after ack: %d entries, len %d, first %v", len(es), b.Len(), es[0].Event)
	}
}
