package storagetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// RunNotifier runs the publish/subscribe cases. Hooks used: Reopen (a message
// published on one instance reaches subscribers on another).
//
// Subscribe must return only once the subscription is active: a message
// published after Subscribe returns is delivered.
func RunNotifier[N storage.Notifier](t *testing.T, newNotifier func(t *testing.T) N, opts ...Option) {
	c := newConfig(opts)
	t.Run("PublishSubscribe", func(t *testing.T) {
		n := newNotifier(t)
		testPubSub(t, n, n)
	})
	t.Run("SharedBackend", func(t *testing.T) {
		a := newNotifier(t)
		b := second(t, c, a)
		testPubSub(t, a, b)
		testPubSub(t, b, a)
	})
}

// testPubSub publishes on p and subscribes on s.
func testPubSub(t *testing.T, p, s storage.Notifier) {
	ctx := testContext(t)
	topic := uniq("topic")
	check(t, "Publish(no subscribers)", p.Publish(ctx, topic, []byte("lost")))

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch1, err := s.Subscribe(sctx, topic)
	check(t, "Subscribe", err)
	ch2, err := s.Subscribe(sctx, topic)
	check(t, "Subscribe", err)
	other, err := s.Subscribe(sctx, topic+"-other")
	check(t, "Subscribe", err)

	msg := []byte("policy v7")
	check(t, "Publish", p.Publish(ctx, topic, msg))
	msg[0] = 'X' // the publisher's buffer is its own after Publish returns
	for i, ch := range []<-chan []byte{ch1, ch2} {
		got := recv(t, ch, 5*time.Second, fmt.Sprintf("subscriber %d", i))
		if string(got) != "policy v7" {
			t.Fatalf("subscriber %d got %q, want %q", i, got, "policy v7")
		}
	}
	for i := range 10 {
		check(t, "Publish", p.Publish(ctx, topic, fmt.Appendf(nil, "m%d", i)))
	}
	for i := range 10 {
		got := recv(t, ch1, 5*time.Second, "subscriber")
		if want := fmt.Sprintf("m%d", i); string(got) != want {
			t.Fatalf("message %d = %q, want %q (in publish order)", i, got, want)
		}
	}
	quiet(t, other, 100*time.Millisecond, "subscriber of another topic")
	check(t, "Publish(empty payload)", p.Publish(ctx, topic, nil))
	if got := recv(t, ch1, 5*time.Second, "subscriber"); len(got) != 0 {
		t.Fatalf("empty payload delivered as %q", got)
	}
	cancel()
	closes(t, ch1, 5*time.Second, "Subscribe")
	closes(t, ch2, 5*time.Second, "Subscribe")
	closes(t, other, 5*time.Second, "Subscribe")
}
