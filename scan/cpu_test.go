package scan

import (
	"os"
	"testing"

	"github.com/agent-assembly/agent-assembly/internal/cputime"
)

// TestCPUThroughput reports throughput per second of CPU time rather than of wall time, which
// stays meaningful on a loaded, shared machine where benchmarks wait for a CPU.
func TestCPUThroughput(t *testing.T) {
	if os.Getenv("SCAN_CPU") == "" {
		t.Skip("set SCAN_CPU=1 to measure throughput per CPU second")
	}
	sc := mustNew(t, Options{})
	type input struct {
		name string
		size int
		scan func()
	}
	clean1, clean64, dirty64, args := cleanText(t, 1<<10), cleanText(t, 64<<10), dirtyText(t, 64<<10), toolArgsJSON(4<<10)
	for _, in := range []input{
		{"ScanString clean 1KiB", len(clean1), func() { sc.ScanString(clean1) }},
		{"ScanString clean 64KiB", len(clean64), func() { sc.ScanString(clean64) }},
		{"ScanString secrets 64KiB", len(dirty64), func() { sc.ScanString(dirty64) }},
		{"ScanJSON tool args 4KiB", len(args), func() { sc.ScanJSON(args) }},
		{"RedactJSON tool args 4KiB", len(args), func() { sc.RedactJSON(args) }},
	} {
		iters := (128 << 20) / in.size
		start := cputime.Process()
		for range iters {
			in.scan()
		}
		d := cputime.Process() - start
		t.Logf("%-28s %5.0f MB per CPU second", in.name, float64(iters*in.size)/d.Seconds()/1e6)
	}
}
