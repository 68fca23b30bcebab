package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// MachineCPU is how busy the whole machine's CPUs were during the run, from
// the kernel's counters (/proc/stat): the gateway, the generator and
// everything else on the machine. Steal is time the hypervisor ran
// something else while a virtual CPU of this machine wanted to run; on a
// shared virtual machine it stretches latency tails whatever the gateway
// does, so compare runs at similar steal.
type MachineCPU struct {
	BusyPercent  float64 `json:"busy_percent"`
	StealPercent float64 `json:"steal_percent"`
}

// cpuTimes is the aggregate "cpu" line of /proc/stat, in clock ticks.
type cpuTimes struct{ busy, steal, total uint64 }

// readCPUTimes reads the aggregate "cpu" line of a /proc/stat.
func readCPUTimes(r io.Reader) (cpuTimes, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != "cpu" {
			continue
		}
		// user nice system idle iowait irq softirq steal [guest guest_nice]:
		// guest time is already counted in user and nice.
		if len(f) < 9 {
			return cpuTimes{}, fmt.Errorf("the cpu line has %d fields, want at least 9 (user through steal)", len(f)-1)
		}
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return cpuTimes{}, fmt.Errorf("cpu field %d: %w", i+1, err)
			}
			v[i] = n
		}
		t := cpuTimes{busy: v[0] + v[1] + v[2] + v[5] + v[6], steal: v[7]}
		for _, n := range v {
			t.total += n
		}
		return t, nil
	}
	if err := sc.Err(); err != nil {
		return cpuTimes{}, err
	}
	return cpuTimes{}, errors.New("no aggregate cpu line")
}

// sampleCPU reads /proc/stat, or reports why it cannot (not Linux).
func sampleCPU() (cpuTimes, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	defer f.Close()
	return readCPUTimes(f)
}

// machineCPU is the machine's load between two samples; nil when no time
// passed or a counter went backwards.
func machineCPU(before, after cpuTimes) *MachineCPU {
	if after.total <= before.total || after.busy < before.busy || after.steal < before.steal {
		return nil
	}
	total := float64(after.total - before.total)
	return &MachineCPU{
		BusyPercent:  100 * float64(after.busy-before.busy) / total,
		StealPercent: 100 * float64(after.steal-before.steal) / total,
	}
}

func printMachine(w io.Writer, m *MachineCPU) {
	fmt.Fprintf(w, "machine (/proc/stat over the run): CPUs busy %.1f%%, stolen by the hypervisor %.1f%%\n", m.BusyPercent, m.StealPercent)
}
