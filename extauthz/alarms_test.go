package extauthz

import (
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/internal/monoclock"
)

// TestAlarmsFireInTheirStep: an alarm never fires before the time asked for
// and fires within a step after it; checks asking at about the same time
// share one channel; deadlines a ring's length apart do not confuse the
// ring.
func TestAlarmsFireInTheirStep(t *testing.T) {
	var a alarms
	for _, d := range []time.Duration{0, time.Millisecond, 12 * time.Millisecond, 40 * time.Millisecond} {
		start := monoclock.Now()
		<-a.after(d)
		got := monoclock.Now() - start
		if got < d {
			t.Errorf("alarm for %v fired after %v: too soon", d, got)
		}
		// The timer itself may run late on a loaded machine; a full second
		// late would mean it was lost.
		if got > d+alarmStep+time.Second {
			t.Errorf("alarm for %v fired after %v", d, got)
		}
	}

	// Deadlines within one step share a channel (most Checks make no timer).
	var shared int
	for range 100 {
		c1, c2 := a.after(time.Hour), a.after(time.Hour)
		if c1 == c2 {
			shared++
		}
	}
	if shared < 90 {
		t.Errorf("only %d of 100 pairs of same-deadline alarms shared a channel", shared)
	}

	// A deadline a whole ring later lands in the same slot: both alarms
	// must still fire, each at its own time.
	ring := time.Duration(len(a.ring)) * alarmStep
	near := a.after(20 * time.Millisecond)
	far := a.after(20*time.Millisecond + ring)
	if near == far {
		t.Fatal("deadlines a ring apart share a channel")
	}
	select {
	case <-near:
	case <-time.After(10 * time.Second):
		t.Fatal("the near alarm never fired after its slot was reused")
	}
	select {
	case <-far:
		t.Fatal("the far alarm fired with the near one")
	default:
	}
	<-far
}

// BenchmarkCheckDeadline compares a shared alarm with a timer reset and
// stopped by every check, the two ways a Check can bound its wait.
func BenchmarkCheckDeadline(b *testing.B) {
	b.Run("alarm", func(b *testing.B) {
		var a alarms
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				select {
				case <-a.after(DefaultTimeout):
				default:
				}
			}
		})
	})
	b.Run("timer", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			t := time.NewTimer(time.Hour)
			for pb.Next() {
				t.Reset(DefaultTimeout)
				select {
				case <-t.C:
				default:
				}
				t.Stop()
			}
		})
	})
}
