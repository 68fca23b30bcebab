package bpf

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Status is how far the kernel layer covers a capability.
type Status uint8

// Statuses.
const (
	// Unavailable: the kernel layer neither enforces nor reports it.
	Unavailable Status = iota
	// ObservedOnly: reported, never enforced.
	ObservedOnly
	// Enforced: enforced and reported.
	Enforced
)

func (s Status) String() string {
	switch s {
	case Enforced:
		return "enforced"
	case ObservedOnly:
		return "observed only"
	}
	return "unavailable"
}

// Capability is one line of the feature report.
type Capability struct {
	Name   string
	Status Status
	// Detail says why, in a sentence an operator can act on.
	Detail string
}

// Capability names.
const (
	CapCgroup  = "cgroup v2"
	CapBPFFS   = "bpffs pinning"
	CapBTF     = "kernel BTF"
	CapNetwork = "network egress (cgroup/connect4, connect6, sendmsg4, sendmsg6)"
	CapExec    = "exec control (tp_btf/sched_process_exec)"
	CapEvents  = "verdict events (ring buffer)"
	CapTracefs = "tracefs"
)

// Features is what the kernel allows, found at start.
type Features struct {
	// CgroupRoot is where the cgroup v2 hierarchy is mounted, or "".
	CgroupRoot string
	// BPFFS is the bpffs mount the objects are pinned under, or "".
	BPFFS string
	// Capabilities, one per name above, in report order.
	Capabilities []Capability
}

// Status returns the status of the named capability.
func (f Features) Status(name string) Status {
	for _, c := range f.Capabilities {
		if c.Name == name {
			return c.Status
		}
	}
	return Unavailable
}

func (f *Features) set(name string, st Status, detail string) {
	for i := range f.Capabilities {
		if f.Capabilities[i].Name == name {
			f.Capabilities[i] = Capability{Name: name, Status: st, Detail: detail}
			return
		}
	}
	f.Capabilities = append(f.Capabilities, Capability{Name: name, Status: st, Detail: detail})
}

// Log writes one line per capability: Info when enforced, Warn when
// observed only, Error when unavailable.
func (f *Features) Log(log *slog.Logger) {
	for _, c := range f.Capabilities {
		lvl := slog.LevelInfo
		switch c.Status {
		case ObservedOnly:
			lvl = slog.LevelWarn
		case Unavailable:
			lvl = slog.LevelError
		}
		log.Log(context.Background(), lvl, "ebpf capability", "capability", c.Name, "status", c.Status.String(), "detail", c.Detail)
	}
}

// mount is one line of /proc/self/mountinfo.
type mount struct{ point, fstype string }

func readMounts() ([]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

// parseMountinfo reads mount points and file system types (proc(5)).
func parseMountinfo(r io.Reader) ([]mount, error) {
	var out []mount
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mount{point: unescapeMount(fields[4]), fstype: fields[sep+1]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return out, nil
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// CgroupRoot returns the mount point of the cgroup v2 hierarchy (on a
// hybrid host, /sys/fs/cgroup/unified).
func CgroupRoot() (string, error) {
	ms, err := readMounts()
	if err != nil {
		return "", err
	}
	best := ""
	for _, m := range ms {
		if m.fstype == "cgroup2" && (best == "" || len(m.point) < len(best)) {
			best = m.point
		}
	}
	if best == "" {
		return "", errors.New("find cgroup v2: no cgroup2 file system is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup) or boot with systemd.unified_cgroup_hierarchy=1")
	}
	return best, nil
}

// ensureBPFFS returns true when dir is on a bpffs, mounting one at dir
// when nothing is mounted there and mount is set.
func ensureBPFFS(dir string, mountIt bool, log *slog.Logger) (mounted bool, err error) {
	ms, err := readMounts()
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if m.point == dir && m.fstype == "bpf" {
			return false, nil
		}
	}
	if !mountIt {
		return false, fmt.Errorf("no bpffs mounted at %s", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("mount bpffs: %w", err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return false, fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	log.Warn("ebpf: bpffs was not mounted; mounted it", "path", dir)
	return true, nil
}

// probeKernel fills the capabilities that can be known before loading.
func probeKernel(f *Features, o *Options, log *slog.Logger) {
	if root, err := CgroupRoot(); err != nil {
		f.set(CapCgroup, Unavailable, err.Error())
	} else {
		f.CgroupRoot = root
		f.set(CapCgroup, Enforced, "cgroup v2 mounted at "+root)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		f.set(CapBTF, Unavailable, "no /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF): exec control cannot attach")
	} else {
		f.set(CapBTF, Enforced, "/sys/kernel/btf/vmlinux present")
	}
	if o.PinPath == "" {
		f.set(CapBPFFS, Unavailable, "pinning disabled by configuration: enforcement ends when this process exits")
	} else if mounted, err := ensureBPFFS(o.BPFFSRoot, !o.NoMount, log); err != nil {
		f.set(CapBPFFS, Unavailable, err.Error()+": enforcement ends when this process exits")
	} else {
		f.BPFFS = o.BPFFSRoot
		detail := "objects pinned under " + o.PinPath + ": agents stay governed across runtime restarts"
		if mounted {
			detail = "bpffs was not mounted, mounted it at " + o.BPFFSRoot + "; " + detail
		}
		f.set(CapBPFFS, Enforced, detail)
	}
	f.set(CapTracefs, Enforced, "not needed: tp_btf attaches through BTF, cgroup programs through the cgroup directory")
	if err := features.HaveMapType(ebpf.RingBuf); err != nil {
		f.set(CapEvents, Unavailable, "ring buffer maps: "+err.Error())
	}
	if err := features.HaveMapType(ebpf.LPMTrie); err != nil {
		f.set(CapNetwork, Unavailable, "LPM trie maps: "+err.Error())
	}
	if err := features.HaveProgramType(ebpf.CGroupSockAddr); err != nil {
		f.set(CapNetwork, Unavailable, "cgroup sock_addr programs: "+err.Error())
	}
}
