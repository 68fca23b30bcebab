package monoclock

import (
	"testing"
	"time"
)

// TestNowFollowsTheClock: Now grows with real time and never goes back, and
// Time converts a reading back to a time that time.Until measures exactly.
func TestNowFollowsTheClock(t *testing.T) {
	a := Now()
	time.Sleep(2 * time.Millisecond)
	b := Now()
	if b-a < 2*time.Millisecond {
		t.Fatalf("Now moved %v across a 2ms sleep", b-a)
	}
	due := Now() + time.Hour
	if u := time.Until(Time(due)); u <= 59*time.Minute || u > time.Hour {
		t.Fatalf("time.Until(Time(now+1h)) = %v", u)
	}
	if d := time.Since(Time(Now())); d < 0 || d > time.Second {
		t.Fatalf("time.Since(Time(Now())) = %v", d)
	}
}

// BenchmarkNow compares a monotonic reading with time.Now.
func BenchmarkNow(b *testing.B) {
	b.Run("monoclock", func(b *testing.B) {
		for b.Loop() {
			_ = Now()
		}
	})
	b.Run("time.Now", func(b *testing.B) {
		for b.Loop() {
			_ = time.Now()
		}
	})
}
