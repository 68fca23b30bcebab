package extauthz

import (
	"testing"
	"time"
)

// TestPoolOverflowsToNewGoroutines: a decision never waits for a busy
// worker; with every worker blocked, run still starts f at once.
func TestPoolOverflowsToNewGoroutines(t *testing.T) {
	p := newPool(1)
	block, ran := make(chan struct{}), make(chan int, 3)
	defer close(block)
	// The first task occupies the only worker (once it is idle to take it).
	deadline := time.Now().Add(10 * time.Second)
	for started := false; !started; {
		select {
		case p.work <- func() { ran <- 1; <-block }:
			started = true
		default:
			if time.Now().After(deadline) {
				t.Fatal("the worker never became idle")
			}
			time.Sleep(time.Millisecond)
		}
	}
	if got := <-ran; got != 1 {
		t.Fatalf("first task: %d", got)
	}
	p.run(func() { ran <- 2 })
	p.run(func() { ran <- 3 })
	got := map[int]bool{<-ran: true, <-ran: true}
	if !got[2] || !got[3] {
		t.Fatalf("tasks run while the worker was busy: %v, want 2 and 3", got)
	}
}
