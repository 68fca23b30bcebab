// Package broadcast fans values out to in-process subscribers whose
// subscriptions end with a context.
package broadcast

import (
	"context"
	"sync"
)

// Overflow says what happens when a subscriber's buffer is full.
type Overflow int

const (
	// Drop skips the value for that subscriber only.
	Drop Overflow = iota
	// Disconnect closes the subscriber's channel, so it learns it fell
	// behind instead of silently missing values.
	Disconnect
)

// Broadcaster delivers each published value to every current subscriber,
// in publish order, without ever blocking the publisher. The zero value is
// not usable; call New.
type Broadcaster[T any] struct {
	buf      int
	overflow Overflow

	mu      sync.Mutex
	subs    map[*sub[T]]struct{}
	closed  bool
	dropped uint64
}

type sub[T any] struct {
	ch   chan T
	done bool
}

// New returns a broadcaster whose subscribers each buffer buf values.
func New[T any](buf int, overflow Overflow) *Broadcaster[T] {
	return &Broadcaster[T]{buf: buf, overflow: overflow, subs: make(map[*sub[T]]struct{})}
}

// Subscribe returns a channel of values published after the call. The
// channel is closed when ctx ends, when the broadcaster is closed, or (with
// Disconnect) when the subscriber falls behind.
func (b *Broadcaster[T]) Subscribe(ctx context.Context) <-chan T {
	s := &sub[T]{ch: make(chan T, b.buf)}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		close(s.ch)
		return s.ch
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	context.AfterFunc(ctx, func() {
		b.mu.Lock()
		b.remove(s)
		b.mu.Unlock()
	})
	return s.ch
}

func (b *Broadcaster[T]) remove(s *sub[T]) {
	if s.done {
		return
	}
	s.done = true
	delete(b.subs, s)
	close(s.ch)
}

// Publish delivers v to every subscriber that has room for it.
func (b *Broadcaster[T]) Publish(v T) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		select {
		case s.ch <- v:
		default:
			b.dropped++
			if b.overflow == Disconnect {
				b.remove(s)
			}
		}
	}
}

// Subscribers returns the number of current subscribers.
func (b *Broadcaster[T]) Subscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// Dropped returns how many deliveries were skipped because a subscriber's
// buffer was full.
func (b *Broadcaster[T]) Dropped() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped
}

// Close closes every subscriber's channel; later subscriptions get a closed
// channel.
func (b *Broadcaster[T]) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for s := range b.subs {
		b.remove(s)
	}
}
