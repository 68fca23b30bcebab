// Package benchload warms up the closed-loop gRPC benchmarks before their
// measured runs, so that what they report is the gateway's steady state.
//
// A gateway's audit journal starts with small files that grow to 16 MiB,
// each zero-filled before first use, and creates its shared-memory copies;
// from about the third full-size file on it recycles both. That start-up
// costs about 0.2 s of CPU once per gateway; unwarmed, a 200,000-check run
// would count it as about 1 µs per check. Checks (-warmup) checks reach the
// recycling on the benchmarks' records; -warmup=0 measures from a cold start.
package benchload

import (
	"flag"
	"sync"
	"sync/atomic"
	"testing"
)

// Checks is how many calls WarmUp makes (the -warmup flag of the test
// binaries that import this package).
var Checks = flag.Int("warmup", 150_000, "calls made before each measured run of the closed-loop gRPC benchmarks (0: none)")

// MinRun is the smallest run that is warmed up: the testing framework's
// shorter probing runs, whose results are discarded, are not.
const MinRun = 50_000

// WarmUp makes Checks calls of call from clients goroutines, each making
// its next call when the previous one has returned, when b's run is at
// least MinRun long. A failed call fails b.
func WarmUp(b *testing.B, clients int, call func() error) {
	b.Helper()
	if b.N < MinRun || *Checks <= 0 {
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for next.Add(1) <= int64(*Checks) {
				if err := call(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}
