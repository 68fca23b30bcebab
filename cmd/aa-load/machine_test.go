package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

func TestReadCPUTimes(t *testing.T) {
	const stat = `cpu  100 5 20 800 10 3 2 60 7 0
cpu0 50 2 10 400 5 1 1 30 0 0
intr 12345
`
	got, err := readCPUTimes(strings.NewReader(stat))
	if err != nil {
		t.Fatal(err)
	}
	// busy = user+nice+system+irq+softirq; guest is inside user already.
	if want := (cpuTimes{busy: 130, steal: 60, total: 1000}); got != want {
		t.Fatalf("readCPUTimes = %+v, want %+v", got, want)
	}
	later := cpuTimes{busy: 230, steal: 110, total: 2000}
	m := machineCPU(got, later)
	if m == nil || math.Abs(m.BusyPercent-10) > 1e-9 || math.Abs(m.StealPercent-5) > 1e-9 {
		t.Fatalf("machineCPU = %+v, want busy 10%% steal 5%%", m)
	}
	if m := machineCPU(later, got); m != nil {
		t.Fatalf("counters going backwards gave %+v, want none", m)
	}
	for _, bad := range []string{"", "intr 1\n", "cpu 1 2 3\n", "cpu 1 2 3 4 5 6 7 x\n"} {
		if _, err := readCPUTimes(strings.NewReader(bad)); err == nil {
			t.Errorf("readCPUTimes(%q) accepted it", bad)
		}
	}
}

// TestMachineLoadReported: on Linux a run reports the machine's load, and
// the text report prints it.
func TestMachineLoadReported(t *testing.T) {
	if _, err := os.Stat("/proc/stat"); err != nil {
		t.Skipf("no /proc/stat on this machine: %v", err)
	}
	addr := servertest.Start(t, "../../examples/policies", nil)
	var out bytes.Buffer
	o := options{addr: addr, rate: 200, duration: 500 * time.Millisecond, concurrency: 4, conns: 1, json: true, target: "health"}
	if err := run(context.Background(), o, &out); err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if m := rep.Machine; m == nil || m.BusyPercent <= 0 || m.BusyPercent > 100 || m.StealPercent < 0 || m.StealPercent > 100 {
		t.Fatalf("machine load %+v", rep.Machine)
	}
	out.Reset()
	o.json = false
	if err := run(context.Background(), o, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "machine (/proc/stat over the run): CPUs busy ") {
		t.Fatalf("text report has no machine line:\n%s", out.String())
	}
}
