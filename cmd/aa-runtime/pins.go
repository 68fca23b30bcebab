package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/agent-assembly/agent-assembly/bpf"
)

// execPinRoot holds one bpffs directory per cgroup that aa-runtime exec
// governs, named by the cgroup's id. The programs stay attached through
// their pinned links when the runtime dies (SIGKILL, OOM): whatever is
// left in the agent's cgroup stays governed in the kernel. A normal exit
// removes the directory; a later exec sweeps the directories of cgroups
// that are empty or gone.
var execPinRoot = filepath.Join(bpf.DefaultBPFFS, bpf.DefaultPinDir, "exec")

// execPinDir is the pin directory of the cgroup at path.
func execPinDir(path string) (string, error) {
	id, err := bpf.CgroupID(path)
	if err != nil {
		return "", err
	}
	return filepath.Join(execPinRoot, strconv.FormatUint(id, 10)), nil
}

// sweepExecPins removes the pins of governed cgroups under cgRoot that no
// process uses any more (their runtime died without cleaning up), and those
// empty cgroups. A pin directory whose cgroup is not under cgRoot is left
// alone: another exec, with another --cgroup-root, may be running it.
func sweepExecPins(cgRoot string, log *slog.Logger) {
	pins, err := os.ReadDir(execPinRoot)
	if err != nil {
		return // nothing pinned yet, or no bpffs
	}
	byID := map[string]string{}
	groups, _ := os.ReadDir(cgRoot)
	for _, g := range groups {
		if !g.IsDir() {
			continue
		}
		p := filepath.Join(cgRoot, g.Name())
		if id, err := bpf.CgroupID(p); err == nil {
			byID[strconv.FormatUint(id, 10)] = p
		}
	}
	for _, pin := range pins {
		cg, ok := byID[pin.Name()]
		if !ok || !cgroupEmpty(cg) {
			continue
		}
		// Unpinning drops the last reference to the links: the programs
		// detach from the (empty) cgroup, which can then go.
		if err := os.RemoveAll(filepath.Join(execPinRoot, pin.Name())); err != nil {
			log.Warn("stale eBPF pins of a dead runtime not removed", "pins", pin.Name(), "cgroup", cg, "err", err)
			continue
		}
		if err := os.Remove(cg); err != nil {
			log.Warn("empty cgroup of a dead runtime not removed", "cgroup", cg, "err", err)
		}
		log.Info("removed the eBPF pins and cgroup a dead runtime left", "cgroup", cg)
	}
}

// cgroupEmpty reports whether no process is in the cgroup at path.
func cgroupEmpty(path string) bool {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	return err == nil && strings.TrimSpace(string(b)) == ""
}
