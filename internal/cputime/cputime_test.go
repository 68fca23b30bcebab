package cputime

import (
	"testing"
	"time"
)

// TestProcessCountsWork: burning CPU moves the counter by at least part of
// the wall time spent, and it never goes backwards.
func TestProcessCountsWork(t *testing.T) {
	before := Process()
	start := time.Now()
	x := 0
	for time.Since(start) < 50*time.Millisecond {
		x++
	}
	after := Process()
	if after < before {
		t.Fatalf("CPU time went backwards: %v then %v", before, after)
	}
	if after-before < 10*time.Millisecond {
		t.Fatalf("50 ms of spinning counted as %v of CPU (%d iterations)", after-before, x)
	}
}
