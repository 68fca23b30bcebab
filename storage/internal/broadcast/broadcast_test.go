package broadcast

import (
	"context"
	"testing"
	"time"
)

func TestDropKeepsSlowSubscriber(t *testing.T) {
	b := New[int](2, Drop)
	ch := b.Subscribe(t.Context())
	for i := range 5 {
		b.Publish(i)
	}
	if got := []int{<-ch, <-ch}; got[0] != 0 || got[1] != 1 {
		t.Fatalf("got %v, want the first two in order", got)
	}
	b.Publish(9)
	if v := <-ch; v != 9 {
		t.Fatalf("after catching up got %d, want 9", v)
	}
	if b.Dropped() != 3 {
		t.Fatalf("Dropped = %d, want 3", b.Dropped())
	}
}

func TestDisconnectClosesSlowSubscriber(t *testing.T) {
	b := New[int](1, Disconnect)
	slow := b.Subscribe(t.Context())
	fast := b.Subscribe(t.Context())
	b.Publish(1)
	<-fast
	b.Publish(2)
	if v, ok := <-slow; !ok || v != 1 {
		t.Fatalf("slow subscriber lost its buffered value: %d %v", v, ok)
	}
	if _, ok := <-slow; ok {
		t.Fatal("a subscriber that fell behind was not disconnected")
	}
	if v := <-fast; v != 2 {
		t.Fatalf("fast subscriber got %d", v)
	}
	if b.Subscribers() != 1 {
		t.Fatalf("Subscribers = %d, want 1", b.Subscribers())
	}
}

func TestContextAndClose(t *testing.T) {
	b := New[int](1, Drop)
	ctx, cancel := context.WithCancel(t.Context())
	ch := b.Subscribe(ctx)
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("value after cancel")
		}
	case <-time.After(time.Second):
		t.Fatal("channel not closed when its context ended")
	}
	other := b.Subscribe(t.Context())
	b.Close()
	if _, ok := <-other; ok {
		t.Fatal("Close left a subscriber open")
	}
	if _, ok := <-b.Subscribe(t.Context()); ok {
		t.Fatal("Subscribe after Close returned an open channel")
	}
	b.Publish(1) // no panic
}
