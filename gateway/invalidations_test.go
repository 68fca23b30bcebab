package gateway

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

func testIssuer(t *testing.T, reg identity.Registry) *identity.Issuer {
	t.Helper()
	i, err := identity.NewIssuer(bytes.Repeat([]byte{1}, 32), identity.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// runHub starts a hub on st and waits until it has read the log.
func runHub(t *testing.T, o InvalidationsOptions) *Invalidations {
	t.Helper()
	h, err := NewInvalidations(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-h.Ready()
	return h
}

func seqsOf(evs []*storage.InvalidationEvent) string {
	s := make([]string, len(evs))
	for i, ev := range evs {
		s[i] = fmt.Sprintf("%d:%s", ev.Seq, ev.Type)
	}
	return fmt.Sprint(s)
}

func TestInvalidationsDeliverInOrderAfterOnEvent(t *testing.T) {
	st := memory.New(memory.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seen := make(chan int64, 100)
	h := runHub(t, InvalidationsOptions{Log: st, Notifier: st, Buffer: 4, OnEvent: func(ev *storage.InvalidationEvent) { seen <- ev.Seq }})
	id := action.AgentID{Org: "o", Team: "t", Agent: "a"}
	for range 6 {
		if _, err := h.Publish(ctx, AgentEvent(storage.InvalidateSuspended, id, "x")); err != nil {
			t.Fatal(err)
		}
	}
	var got []*storage.InvalidationEvent
	after := int64(0)
	for len(got) < 6 {
		evs, err := h.Next(ctx, after, 4)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			// OnEvent ran for the event before it was handed out.
			select {
			case s := <-seen:
				if s != ev.Seq {
					t.Fatalf("OnEvent saw %d, then %d was delivered", s, ev.Seq)
				}
			default:
				t.Fatalf("event %d delivered before OnEvent ran for it", ev.Seq)
			}
		}
		got = append(got, evs...)
		after = got[len(got)-1].Seq
	}
	for i, ev := range got {
		if ev.Seq != int64(i+1) {
			t.Fatalf("events %s: want seq 1..6 in order", seqsOf(got))
		}
	}
	// Older than the 4-event buffer: served from the log.
	evs, err := h.Next(ctx, 0, 10)
	if err != nil || seqsOf(evs) != "[1:agent_suspended 2:agent_suspended 3:agent_suspended 4:agent_suspended 5:agent_suspended 6:agent_suspended]" {
		t.Fatalf("read from the start: %s %v", seqsOf(evs), err)
	}
	// Idempotent keys: a second publish of the same key is not an event.
	for range 2 {
		if _, err := h.Publish(ctx, &storage.InvalidationEvent{Type: storage.InvalidateApproval, ApprovalID: "ap", Key: "approval:ap"}); err != nil {
			t.Fatal(err)
		}
	}
	h.PolicyApplied(ctx, "v1", "v2")
	evs, err = h.Next(ctx, 6, 10)
	for err == nil && len(evs) < 2 {
		var more []*storage.InvalidationEvent
		more, err = h.Next(ctx, evs[len(evs)-1].Seq, 10)
		evs = append(evs, more...)
	}
	if err != nil || seqsOf(evs) != "[7:approval_resolved 8:policy_changed]" {
		t.Fatalf("after duplicates: %s %v", seqsOf(evs), err)
	}
	// A second replica announcing the same version adds nothing.
	h.PolicyApplied(ctx, "v1", "v2")
	if n, _ := st.InvalidationsSince(ctx, 8, 0); len(n) != 0 {
		t.Fatalf("the same policy version was announced twice: %s", seqsOf(n))
	}
}

func TestInvalidationsResyncAfterTrim(t *testing.T) {
	st := memory.New(memory.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old := time.Now().Add(-48 * time.Hour)
	for range 5 {
		if _, err := st.AppendInvalidation(ctx, &storage.InvalidationEvent{Type: storage.InvalidatePolicy, Time: old}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.AppendInvalidation(ctx, &storage.InvalidationEvent{Type: storage.InvalidateResumed, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.TrimInvalidations(ctx, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	h := runHub(t, InvalidationsOptions{Log: st, Buffer: 2})
	// A subscriber that saw seq 2 missed 3..5 (trimmed): it gets a resync first.
	evs, err := h.Next(ctx, 2, 10)
	if err != nil || seqsOf(evs) != "[5:resync 6:agent_resumed]" {
		t.Fatalf("resume across a trimmed gap: %s %v; want a resync at 5, then 6", seqsOf(evs), err)
	}
}
