package gateway

import (
	"context"
	"errors"
	"testing"
	"time"
)

type ctxKey struct{}

// TestBoundCtx: the bound context keeps the parent's values, ignores its
// cancellation, and expires at its own deadline; a context released in time
// is reused without its deadline carrying over.
func TestBoundCtx(t *testing.T) {
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	cancel()
	c := bound(parent, time.Hour)
	if c.Value(ctxKey{}) != "v" {
		t.Fatalf("value %v, want the parent's", c.Value(ctxKey{}))
	}
	if c.Err() != nil {
		t.Fatalf("err %v: the parent's cancellation must not reach the bound context", c.Err())
	}
	if dl, ok := c.Deadline(); !ok || time.Until(dl) < 59*time.Minute {
		t.Fatalf("deadline %v %v", dl, ok)
	}
	select {
	case <-c.Done():
		t.Fatal("done before its deadline")
	default:
	}
	c.release()

	short := bound(context.Background(), time.Millisecond)
	child, stop := context.WithCancel(short) // derived contexts follow it
	defer stop()
	select {
	case <-child.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the bound context never expired")
	}
	if !errors.Is(short.Err(), context.DeadlineExceeded) || !errors.Is(child.Err(), context.DeadlineExceeded) {
		t.Fatalf("errs %v %v", short.Err(), child.Err())
	}
	short.release() // expired: not reused

	for range 100 {
		c := bound(context.Background(), time.Hour)
		if c == short || c.Err() != nil {
			t.Fatal("an expired context was handed out again")
		}
		c.release()
	}
}

// TestBoundCtxDerived: contexts derived from a bound context register with
// it (no watcher goroutine) and unregister when cancelled; one left
// registered at release keeps the bound context from being reused.
func TestBoundCtxDerived(t *testing.T) {
	c := bound(context.Background(), time.Hour)
	child, cancel := context.WithTimeout(c, time.Minute)
	if n := len(c.afters); n != 1 {
		t.Fatalf("%d registrations after deriving a context, want 1", n)
	}
	cancel()
	if n := len(c.afters); n != 0 {
		t.Fatalf("%d registrations after cancelling it, want 0", n)
	}
	if child.Err() == nil {
		t.Fatal("the derived context is not cancelled")
	}
	c.release()

	kept := bound(context.Background(), time.Hour)
	_, leak := context.WithCancel(kept)
	defer leak()
	kept.release()
	for range 100 {
		c := bound(context.Background(), time.Hour)
		if c == kept {
			t.Fatal("a bound context with a live derived context was reused")
		}
		c.release()
	}
}

// TestBoundCtxUnwaited: a bound context nothing waits on starts no timer,
// yet still expires: Err reads the clock, and a Done asked for after the
// deadline is already closed.
func TestBoundCtxUnwaited(t *testing.T) {
	c := bound(context.Background(), time.Millisecond)
	if c.Err() != nil {
		t.Fatalf("err %v before the deadline", c.Err())
	}
	if c.armed.Load() {
		t.Fatal("Err started the timer")
	}
	time.Sleep(5 * time.Millisecond)
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("err %v after the deadline, want DeadlineExceeded", c.Err())
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("done is open after Err reported the deadline")
	}
	c.release() // expired: not reused

	late := bound(context.Background(), time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	select {
	case <-late.Done(): // the first wait comes after the deadline
	default:
		t.Fatal("Done asked for after the deadline is not closed")
	}
	if !errors.Is(late.Err(), context.DeadlineExceeded) {
		t.Fatalf("err %v", late.Err())
	}
	late.release()

	for range 100 {
		c := bound(context.Background(), time.Hour)
		if c == late || c.Err() != nil || c.armed.Load() {
			t.Fatal("an expired or armed context was handed out again")
		}
		c.release()
	}
}

// TestBoundCtxWatchedAfterRelease: a context that was waited on may be
// read after release (database/sql's row watcher calls Err once the rows
// are closed), so it is not reused: later calls never share it, and the
// race detector sees no conflict between the late reader and them.
func TestBoundCtxWatchedAfterRelease(t *testing.T) {
	watched := bound(context.Background(), time.Hour)
	done := watched.Done()
	watched.release()
	stop := make(chan struct{})
	read := make(chan struct{})
	go func() {
		defer close(read)
		for {
			select {
			case <-stop:
				return
			case <-done:
				t.Error("a released context expired: its timer should have stopped")
				return
			default:
			}
			_ = watched.Err()
			_, _ = watched.Deadline()
		}
	}()
	for range 1000 {
		c := bound(context.Background(), time.Millisecond)
		if c == watched {
			t.Fatal("a context that was waited on was reused")
		}
		_ = c.Err()
		c.release()
	}
	close(stop)
	<-read
}

// BenchmarkBoundCtx measures a bound call that waits on Done (the timer
// runs) and one that only asks Err, as a cache hit or an inline audit
// append does.
func BenchmarkBoundCtx(b *testing.B) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, waited := range []bool{true, false} {
		name := map[bool]string{true: "waited", false: "unwaited"}[waited]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c := bound(parent, 2*time.Second)
				if waited {
					_ = c.Done()
				} else {
					_ = c.Err()
				}
				c.release()
			}
		})
	}
}

func BenchmarkWithTimeoutWithoutCancel(b *testing.B) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ReportAllocs()
	for b.Loop() {
		c, cancel := context.WithTimeout(context.WithoutCancel(parent), 2*time.Second)
		_ = c.Done()
		cancel()
	}
}
