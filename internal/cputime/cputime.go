// Package cputime reads the CPU time this process has used, for benchmarks
// that report CPU per operation: on a shared machine that is steadier than
// throughput, which drops whenever other work takes the cores.
package cputime

import (
	"syscall"
	"time"
)

// Process returns the user plus system CPU time of every thread of this
// process so far, or 0 when the kernel does not say.
func Process() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
