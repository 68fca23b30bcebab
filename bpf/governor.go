package bpf

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Defaults.
const (
	// DefaultBPFFS is where bpffs is expected (and mounted when missing).
	DefaultBPFFS = "/sys/fs/bpf"
	// DefaultPinDir is the directory under the bpffs that holds the maps
	// and links.
	DefaultPinDir = "agent-assembly"
)

// ErrNotGoverned is returned for a cgroup the governor has no entry for.
var ErrNotGoverned = errors.New("cgroup is not governed")

// Options configures Open. The zero value pins under
// /sys/fs/bpf/agent-assembly and logs to slog.Default().
type Options struct {
	// Logger receives the capability report and lifecycle lines.
	Logger *slog.Logger
	// BPFFSRoot is the bpffs mount point; DefaultBPFFS when empty.
	BPFFSRoot string
	// PinPath is where maps and links are pinned; BPFFSRoot/DefaultPinDir
	// when empty. Two governors with different PinPaths are independent.
	PinPath string
	// NoPin loads without pinning: enforcement ends with the process.
	NoPin bool
	// NoMount refuses to mount bpffs when it is missing (pinning is then
	// unavailable).
	NoMount bool
	// Always lists destinations every governed agent may reach: the
	// runtime's TCP endpoint, the DNS resolver (port 53), the gateway,
	// the Envoy egress listener.
	Always []Destination
	// Limits bound each agent's share of the kernel maps.
	Limits Limits

	// assumeMissing names kernel features to treat as missing (tests).
	assumeMissing map[string]bool
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.BPFFSRoot == "" {
		o.BPFFSRoot = DefaultBPFFS
	}
	if o.NoPin {
		o.PinPath = ""
	} else if o.PinPath == "" {
		o.PinPath = filepath.Join(o.BPFFSRoot, DefaultPinDir)
	}
	o.Limits = o.Limits.withDefaults()
	return o
}

// netLinks are the programs attached to every governed cgroup.
var netLinks = []struct {
	name   string
	attach ebpf.AttachType
}{
	{"connect4", ebpf.AttachCGroupInet4Connect},
	{"connect6", ebpf.AttachCGroupInet6Connect},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg},
}

type netPrograms struct {
	Connect4 *ebpf.Program `ebpf:"aa_connect4"`
	Connect6 *ebpf.Program `ebpf:"aa_connect6"`
	Sendmsg4 *ebpf.Program `ebpf:"aa_sendmsg4"`
	Sendmsg6 *ebpf.Program `ebpf:"aa_sendmsg6"`
}

func (p *netPrograms) byName(name string) *ebpf.Program {
	switch name {
	case "connect4":
		return p.Connect4
	case "connect6":
		return p.Connect6
	case "sendmsg4":
		return p.Sendmsg4
	case "sendmsg6":
		return p.Sendmsg6
	}
	return nil
}

func (p *netPrograms) close() {
	for _, pr := range []*ebpf.Program{p.Connect4, p.Connect6, p.Sendmsg4, p.Sendmsg6} {
		if pr != nil {
			pr.Close()
		}
	}
}

type execPrograms struct {
	Exec *ebpf.Program `ebpf:"aa_exec"`
}

// governed is one governed cgroup.
type governed struct {
	id    uint64
	path  string
	slot  uint32
	links map[string]link.Link
}

// Governor owns the loaded programs and maps. Its methods are safe for
// concurrent use.
type Governor struct {
	log      *slog.Logger
	opts     Options
	features Features

	maps    governorMaps
	net     netPrograms
	hasNet  bool
	exec    execPrograms
	execLnk link.Link

	mu     sync.Mutex
	agents map[uint64]*governed
	closed bool
	// ruleKeys and execKeys index the map keys of every slot.
	ruleKeys map[uint32]map[governorRuleKey]struct{}
	execKeys map[uint32][]governorExecKey
}

// Open detects what the kernel allows, logs one line per capability, loads
// the programs (reusing pinned maps, so a restarted runtime keeps the
// rules and the queued events), takes over pinned links, and attaches the
// exec tracer. A capability the kernel lacks degrades (to observed only or
// unavailable) with an error line; Open fails only when nothing at all
// can be loaded or the configuration is invalid.
func Open(opts Options) (*Governor, error) {
	o := opts.withDefaults()
	log := o.Logger
	if err := o.Limits.validate(); err != nil {
		return nil, fmt.Errorf("open governor: %w", err)
	}
	always, err := compileEgress("always-allowed", o.Always, o.Limits.MaxDestinations)
	if err != nil {
		return nil, fmt.Errorf("open governor: %w", err)
	}
	g := &Governor{log: log, opts: o, agents: map[uint64]*governed{}, ruleKeys: map[uint32]map[governorRuleKey]struct{}{}, execKeys: map[uint32][]governorExecKey{}}
	f := &g.features
	probeKernel(f, &o, log)
	if f.Status(CapBPFFS) != Enforced {
		o.PinPath = ""
		g.opts.PinPath = ""
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		log.Warn("ebpf: cannot lift the memlock limit; loading may fail on kernels before 5.11", "err", err)
	}

	spec, err := loadGovernor()
	if err != nil {
		return nil, fmt.Errorf("open governor: %w", err)
	}
	mapOpts := ebpf.MapOptions{PinPath: o.PinPath}
	if o.PinPath == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	} else if err := os.MkdirAll(filepath.Join(o.PinPath, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("open governor: create pin directory: %w", err)
	}
	if err := spec.LoadAndAssign(&g.maps, &ebpf.CollectionOptions{Maps: mapOpts}); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("open governor: pinned maps under %s come from an incompatible version; release the agents and remove the directory (Governor.Teardown): %w", o.PinPath, err)
		}
		f.set(CapEvents, Unavailable, "load maps: "+firstLine(err))
		f.set(CapNetwork, Unavailable, "maps could not be created")
		f.set(CapExec, Unavailable, "maps could not be created")
		f.Log(log)
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("open governor: load maps %s: %w", privilegeHint, err)
		}
		return nil, fmt.Errorf("open governor: load maps: %w", err)
	}
	if !hasCap(f, CapEvents) {
		f.set(CapEvents, Enforced, "ring buffer "+strconv.Itoa(int(g.maps.AaEvents.MaxEntries()>>20))+" MiB; drops are counted")
	}
	repl := map[string]*ebpf.Map{
		"aa_agents": g.maps.AaAgents, "aa_rules": g.maps.AaRules, "aa_exec_rules": g.maps.AaExecRules,
		"aa_events": g.maps.AaEvents, "aa_stats": g.maps.AaStats, "aa_scratch": g.maps.AaScratch,
	}
	progOpts := &ebpf.CollectionOptions{MapReplacements: repl}

	g.loadNet(spec, progOpts)
	g.loadExec(spec, progOpts)

	if err := g.indexSlots(); err != nil {
		g.Close()
		return nil, fmt.Errorf("open governor: %w", err)
	}
	if err := g.writeSlot(0, always); err != nil {
		g.Close()
		return nil, fmt.Errorf("open governor: always-allowed destinations: %w", err)
	}
	if err := g.recover(); err != nil {
		g.Close()
		return nil, fmt.Errorf("open governor: recover pinned agents: %w", err)
	}
	f.Log(log)
	return g, nil
}

func hasCap(f *Features, name string) bool {
	for _, c := range f.Capabilities {
		if c.Name == name {
			return true
		}
	}
	return false
}

// firstLine shortens a verifier error to its first line and says what to
// do about a permission error.
func firstLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if errors.Is(err, unix.EPERM) {
		s += " " + privilegeHint
	}
	return s
}

const privilegeHint = "(loading eBPF needs root, or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN)"

func (g *Governor) loadNet(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) {
	f := &g.features
	switch {
	case hasCap(f, CapNetwork):
		return // the probe found it unavailable
	case f.CgroupRoot == "":
		f.set(CapNetwork, Unavailable, "no cgroup v2 hierarchy to attach to")
		return
	case g.opts.assumeMissing["cgroup_sock_addr"]:
		f.set(CapNetwork, Unavailable, "cgroup sock_addr programs: assumed missing (test)")
		return
	}
	if err := spec.LoadAndAssign(&g.net, opts); err != nil {
		f.set(CapNetwork, Unavailable, "load cgroup sock_addr programs: "+firstLine(err)+"; connections from agents are not checked by the kernel")
		return
	}
	g.hasNet = true
	f.set(CapNetwork, Enforced, "connect and sendmsg from governed cgroups are judged in the kernel (deny: EPERM; redirect: TCP to the local Envoy listener)")
}

func (g *Governor) loadExec(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) {
	f := &g.features
	switch {
	case f.CgroupRoot == "":
		f.set(CapExec, Unavailable, "no cgroup v2 hierarchy: governed processes cannot be told apart")
		return
	case f.Status(CapBTF) != Enforced:
		f.set(CapExec, Unavailable, "tp_btf needs kernel BTF (/sys/kernel/btf/vmlinux)")
		return
	}
	status, detail := Enforced, "execs in governed cgroups are reported; denied ones are killed (SIGKILL) before user code runs"
	var firstErr error
	if !g.opts.assumeMissing["send_signal"] {
		firstErr = spec.LoadAndAssign(&g.exec, opts)
	} else {
		firstErr = errors.New("bpf_send_signal assumed missing (test)")
	}
	if firstErr != nil {
		// Retry without the kill: the verifier skips the dead branch, so a
		// kernel that refuses bpf_send_signal still reports.
		if err := spec.Variables["exec_enforce"].Set(uint32(0)); err != nil {
			f.set(CapExec, Unavailable, "set exec_enforce: "+err.Error())
			return
		}
		defer spec.Variables["exec_enforce"].Set(uint32(1)) //nolint:errcheck // restoring a value that was set before
		if err := spec.LoadAndAssign(&g.exec, opts); err != nil {
			f.set(CapExec, Unavailable, "load tp_btf/sched_process_exec: "+firstLine(err))
			return
		}
		status, detail = ObservedOnly, "execs are reported but a denied exec is NOT killed: "+firstLine(firstErr)
	}
	lnk, err := link.AttachTracing(link.TracingOptions{Program: g.exec.Exec})
	if err != nil {
		g.exec.Exec.Close()
		g.exec.Exec = nil
		f.set(CapExec, Unavailable, "attach tp_btf/sched_process_exec: "+firstLine(err))
		return
	}
	if g.opts.PinPath != "" {
		pin := filepath.Join(g.opts.PinPath, "links", "exec")
		if old, err := link.LoadPinnedLink(pin, nil); err == nil {
			// The new tracer is attached already; retire the old one.
			old.Unpin()
			old.Close()
		}
		if err := lnk.Pin(pin); err != nil {
			g.log.Warn("ebpf: cannot pin the exec tracer; it ends with this process", "err", err)
		}
	}
	g.execLnk = lnk
	f.set(CapExec, status, detail)
}

// Features returns what Open found.
func (g *Governor) Features() Features { return g.features }

// CgroupID returns the id of the cgroup v2 directory at path, the value
// bpf_get_current_cgroup_id() reports for its processes.
func CgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup: %w", err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("statfs cgroup: %w", err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s: not on a cgroup v2 file system", path)
	}
	return st.Ino, nil
}

// Govern sets cfg for the cgroup at path and attaches the network
// programs to it (once). It is also how a policy change is applied: the
// new rules go into a fresh slot, then the agent's entry is switched to it
// in one map update, then the old slot is cleared, so every connect sees
// either the old or the new rules and the programs stay attached.
// Call it before moving the agent's first process into the cgroup.
// A configuration that does not fit the maps is rejected before anything
// is written.
func (g *Governor) Govern(path string, cfg AgentConfig) error {
	if err := validateConfig(&cfg); err != nil {
		return fmt.Errorf("govern %s: %w", path, err)
	}
	id, err := CgroupID(path)
	if err != nil {
		return fmt.Errorf("govern %s: %w", path, err)
	}
	entries, err := compileEgress("egress", cfg.Egress, g.opts.Limits.MaxDestinations)
	if err != nil {
		return fmt.Errorf("govern %s: %w", path, err)
	}
	if _, err := compileExec(&cfg, 0, g.opts.Limits.MaxExecRules); err != nil {
		return fmt.Errorf("govern %s: %w", path, err)
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return fmt.Errorf("govern %s: governor closed", path)
	}
	a := g.agents[id]
	slot, err := g.freeSlot()
	if err != nil {
		return fmt.Errorf("govern %s: %w", path, err)
	}
	execs, _ := compileExec(&cfg, slot, g.opts.Limits.MaxExecRules)
	err = g.writeSlot(slot, entries)
	if err == nil {
		if err = g.writeExec(slot, execs); err != nil {
			err = fmt.Errorf("write exec rule: %w", err)
		}
	}
	if err != nil {
		g.clearSlot(slot)
		if a != nil {
			return fmt.Errorf("govern %s: %w", path, g.failClosed(a, &cfg, slot, err))
		}
		return fmt.Errorf("govern %s: %w", path, err)
	}
	val := agentValue(&cfg, slot)
	if err := g.maps.AaAgents.Put(id, val); err != nil {
		g.clearSlot(slot)
		return fmt.Errorf("govern %s: write agent: %w", path, mapErr(err, "governed cgroups", MaxAgents))
	}
	if a == nil {
		a = &governed{id: id, links: map[string]link.Link{}}
		g.agents[id] = a
	} else if a.slot != slot {
		g.clearSlot(a.slot)
	}
	a.slot = slot
	a.path = path
	if err := g.attach(a); err != nil {
		return fmt.Errorf("govern %s: %w", path, err)
	}
	if !g.hasNet {
		g.log.Warn("ebpf: agent governed without kernel network enforcement", "cgroup", path, "reason", g.features.capDetail(CapNetwork))
	}
	g.log.Debug("ebpf: agent governed", "cgroup", path, "cgroup_id", id, "agent", cfg.ID, "slot", slot, "destinations", len(entries), "exec_rules", len(execs), "network", cfg.Network.String())
	return nil
}

func (f *Features) capDetail(name string) string {
	for _, c := range f.Capabilities {
		if c.Name == name {
			return c.Detail
		}
	}
	return ""
}

func mapErr(err error, what string, capacity int) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
		return fmt.Errorf("%w: %s map full (capacity %d): %w", ErrCapacity, what, capacity, err)
	}
	return err
}

func agentValue(cfg *AgentConfig, slot uint32) governorAgent {
	v := governorAgent{Id: cfg.ID, Slot: slot}
	switch cfg.Network {
	case NetworkRedirect:
		v.Flags |= agentRedirect
		a4 := cfg.Redirect.Addr().Unmap().As4()
		v.Redirect4 = nativeFromBE(a4[:])
		v.RedirectPort = be16(cfg.Redirect.Port())
		if cfg.Redirect6.IsValid() {
			a6 := cfg.Redirect6.As16()
			for i := range 4 {
				v.Redirect6[i] = nativeFromBE(a6[i*4 : i*4+4])
			}
		}
	case NetworkObserve:
		v.Flags |= agentNetObserve
	}
	if cfg.ExecAllow != nil {
		v.Flags |= agentExecAllowlist
	}
	if cfg.Exec == ExecObserve {
		v.Flags |= agentExecObserve
	}
	return v
}

// failClosed handles a policy change that could not be written for an
// agent that is already running: rather than keep enforcing the old rules,
// the agent is switched to an empty slot, where it reaches only the
// always-allowed destinations (or Envoy, in redirect mode) and every exec
// is killed, until a later Govern succeeds.
func (g *Governor) failClosed(a *governed, cfg *AgentConfig, empty uint32, cause error) error {
	closed := *cfg
	if closed.Network == NetworkObserve {
		closed.Network = NetworkDeny
	}
	closed.Exec = ExecEnforce
	closed.ExecAllow = []ExecRule{}
	val := agentValue(&closed, empty)
	if err := g.maps.AaAgents.Put(a.id, val); err != nil {
		g.log.Error("ebpf: policy change failed and the agent could not be closed down; it keeps its previous rules", "cgroup", a.path, "cgroup_id", a.id, "err", err, "cause", cause)
		return fmt.Errorf("%w; failing closed also failed: %w", cause, err)
	}
	g.clearSlot(a.slot)
	a.slot = empty
	g.ruleKeys[empty] = map[governorRuleKey]struct{}{}
	g.log.Error("ebpf: policy change could not be written; the agent is failed closed (no egress but always-allowed, every exec killed) until it can be", "cgroup", a.path, "cgroup_id", a.id, "err", cause)
	return fmt.Errorf("%w (agent failed closed)", cause)
}

// Agent flags (c/governor.c).
const (
	agentRedirect      = 1 << 0
	agentNetObserve    = 1 << 1
	agentExecAllowlist = 1 << 2
	agentExecObserve   = 1 << 3
)

// freeSlot returns a slot no agent uses. Slot 0 is the always-allowed set.
func (g *Governor) freeSlot() (uint32, error) {
	used := make(map[uint32]bool, len(g.agents))
	for _, a := range g.agents {
		used[a.slot] = true
	}
	for s := uint32(1); s <= 2*MaxAgents; s++ {
		if !used[s] {
			return s, nil
		}
	}
	return 0, &CapacityError{What: "governed cgroups", Have: len(g.agents) + 1, Max: MaxAgents}
}

// writeSlot puts entries into slot, replacing what is there: new entries
// are written first, then stale ones removed.
func (g *Governor) writeSlot(slot uint32, entries []entry) error {
	idx := g.ruleKeys[slot]
	if idx == nil {
		idx = map[governorRuleKey]struct{}{}
		g.ruleKeys[slot] = idx
	}
	want := make(map[governorRuleKey]struct{}, len(entries))
	for _, e := range entries {
		k := trieKey(slot, e.prefix)
		if err := g.maps.AaRules.Put(k, trieValue(e)); err != nil {
			// Keep what was written in the index so clearSlot finds it.
			for k := range want {
				idx[k] = struct{}{}
			}
			return fmt.Errorf("write rule %s: %w", e.prefix, mapErr(err, "egress rules", ruleCapacity))
		}
		want[k] = struct{}{}
	}
	for k := range idx {
		if _, ok := want[k]; !ok {
			g.maps.AaRules.Delete(k) //nolint:errcheck // a concurrent delete is fine
		}
	}
	g.ruleKeys[slot] = want
	return nil
}

// writeExec puts exec rules into a fresh slot.
func (g *Governor) writeExec(slot uint32, execs []execEntry) error {
	for _, e := range execs {
		if err := g.maps.AaExecRules.Put(e.key, e.rule); err != nil {
			return mapErr(err, "exec rules", execCapacity)
		}
		g.execKeys[slot] = append(g.execKeys[slot], e.key)
	}
	return nil
}

// indexSlots reads which rule keys every slot has, once at start; after
// that the governor keeps the index itself and never scans the maps.
func (g *Governor) indexSlots() error {
	var k governorRuleKey
	var v governorRule
	it := g.maps.AaRules.Iterate()
	for it.Next(&k, &v) {
		if g.ruleKeys[k.Slot] == nil {
			g.ruleKeys[k.Slot] = map[governorRuleKey]struct{}{}
		}
		g.ruleKeys[k.Slot][k] = struct{}{}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate rules: %w", err)
	}
	var ek governorExecKey
	var ev governorExecRule
	eit := g.maps.AaExecRules.Iterate()
	for eit.Next(&ek, &ev) {
		g.execKeys[ek.Slot] = append(g.execKeys[ek.Slot], ek)
	}
	if err := eit.Err(); err != nil {
		return fmt.Errorf("iterate exec rules: %w", err)
	}
	return nil
}

// clearSlot removes every rule of slot.
func (g *Governor) clearSlot(slot uint32) {
	if slot == 0 {
		return
	}
	for k := range g.ruleKeys[slot] {
		g.maps.AaRules.Delete(k) //nolint:errcheck // best effort; the next Open collects leftovers
	}
	delete(g.ruleKeys, slot)
	for _, k := range g.execKeys[slot] {
		g.maps.AaExecRules.Delete(k) //nolint:errcheck // best effort
	}
	delete(g.execKeys, slot)
}

func (g *Governor) linkPin(id uint64, name string) string {
	if g.opts.PinPath == "" {
		return ""
	}
	return filepath.Join(g.opts.PinPath, "links", strconv.FormatUint(id, 10), name)
}

// attach attaches the network programs that are not attached yet.
func (g *Governor) attach(a *governed) error {
	if !g.hasNet {
		return nil
	}
	for _, nl := range netLinks {
		if _, ok := a.links[nl.name]; ok {
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: a.path, Attach: nl.attach, Program: g.net.byName(nl.name)})
		if err != nil {
			return fmt.Errorf("attach %s: %w", nl.name, err)
		}
		if pin := g.linkPin(a.id, nl.name); pin != "" {
			if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
				l.Close()
				return fmt.Errorf("pin %s: %w", nl.name, err)
			}
			if err := l.Pin(pin); err != nil {
				l.Close()
				return fmt.Errorf("pin %s (the kernel may lack bpf_link for cgroups): %w", nl.name, err)
			}
		}
		a.links[nl.name] = l
	}
	return nil
}

// recover takes over the agents and links a previous governor pinned:
// links get the freshly loaded programs (link update, no detach), and
// rules of slots no agent uses any more are removed.
func (g *Governor) recover() error {
	var id uint64
	var v governorAgent
	it := g.maps.AaAgents.Iterate()
	used := map[uint32]bool{0: true}
	for it.Next(&id, &v) {
		a := &governed{id: id, slot: v.Slot, links: map[string]link.Link{}}
		used[v.Slot] = true
		g.agents[id] = a
		for _, nl := range netLinks {
			pin := g.linkPin(id, nl.name)
			if pin == "" {
				continue
			}
			l, err := link.LoadPinnedLink(pin, nil)
			if err != nil {
				continue
			}
			if g.hasNet {
				if err := l.Update(g.net.byName(nl.name)); err != nil {
					g.log.Warn("ebpf: cannot update a pinned link; it keeps the previous program", "cgroup_id", id, "program", nl.name, "err", err)
				}
			}
			a.links[nl.name] = l
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate agents: %w", err)
	}
	var stale []uint32
	for slot := range g.ruleKeys {
		if !used[slot] {
			stale = append(stale, slot)
		}
	}
	for slot := range g.execKeys {
		if !used[slot] && g.ruleKeys[slot] == nil {
			stale = append(stale, slot)
		}
	}
	for _, s := range stale {
		g.clearSlot(s)
	}
	if n := len(g.agents); n > 0 {
		g.log.Info("ebpf: took over pinned agents; they stayed governed while no runtime ran", "agents", n)
	}
	return nil
}

// Governed returns the cgroup ids that have an agent entry, including
// ones recovered from pins.
func (g *Governor) Governed() []uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]uint64, 0, len(g.agents))
	for id := range g.agents {
		out = append(out, id)
	}
	return out
}

// Release detaches the programs from the cgroup at path and removes its
// rules. Processes still in the cgroup are no longer governed.
func (g *Governor) Release(path string) error {
	id, err := CgroupID(path)
	if err != nil {
		return fmt.Errorf("release %s: %w", path, err)
	}
	return g.ReleaseID(id)
}

// ReleaseID is Release by cgroup id, for cgroups whose directory is gone.
func (g *Governor) ReleaseID(id uint64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	a := g.agents[id]
	if a == nil {
		return fmt.Errorf("release cgroup %d: %w", id, ErrNotGoverned)
	}
	var errs []error
	for name, l := range a.links {
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", name, err))
		}
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", name, err))
		}
	}
	if g.opts.PinPath != "" {
		os.Remove(filepath.Join(g.opts.PinPath, "links", strconv.FormatUint(id, 10)))
	}
	if err := g.maps.AaAgents.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("delete agent: %w", err))
	}
	g.clearSlot(a.slot)
	delete(g.agents, id)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release cgroup %d: %w", id, err)
	}
	return nil
}

// Prune releases every governed cgroup whose directory is gone (an agent
// whose cgroup was removed without Release) and returns their ids. Agents
// taken over from pins are only pruned once Govern has told this governor
// their path.
func (g *Governor) Prune() ([]uint64, error) {
	g.mu.Lock()
	var gone []uint64
	for id, a := range g.agents {
		if a.path == "" {
			continue
		}
		if cur, err := CgroupID(a.path); err != nil || cur != id {
			gone = append(gone, id)
		}
	}
	g.mu.Unlock()
	var errs []error
	for _, id := range gone {
		if err := g.ReleaseID(id); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return gone, fmt.Errorf("prune: %w", err)
	}
	return gone, nil
}

// Stats are the kernel-side counters.
type Stats struct {
	// Events is how many verdicts reached the ring buffer.
	Events uint64
	// Drops is how many verdicts were lost because the ring buffer was
	// full (the verdict itself was still enforced).
	Drops uint64
}

// Stats sums the per-CPU counters.
func (g *Governor) Stats() (Stats, error) {
	get := func(idx uint32) (uint64, error) {
		var vals []uint64
		if err := g.maps.AaStats.Lookup(idx, &vals); err != nil {
			return 0, fmt.Errorf("read stats: %w", err)
		}
		var s uint64
		for _, v := range vals {
			s += v
		}
		return s, nil
	}
	var st Stats
	var err error
	if st.Events, err = get(1); err != nil {
		return st, err
	}
	st.Drops, err = get(0)
	return st, err
}

// Close releases this process's handles. Pinned maps and links stay in
// the kernel, so agents remain governed and verdicts queue in the ring
// buffer for the next Open; use Teardown to remove everything.
func (g *Governor) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	var errs []error
	for _, a := range g.agents {
		for _, l := range a.links {
			if err := l.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if g.execLnk != nil {
		errs = append(errs, g.execLnk.Close())
	}
	g.net.close()
	if g.exec.Exec != nil {
		errs = append(errs, g.exec.Exec.Close())
	}
	errs = append(errs, g.maps.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close governor: %w", err)
	}
	return nil
}

// Teardown releases every agent, unpins everything and closes: nothing
// of the governor remains in the kernel.
func (g *Governor) Teardown() error {
	var errs []error
	for _, id := range g.Governed() {
		if err := g.ReleaseID(id); err != nil {
			errs = append(errs, err)
		}
	}
	if g.execLnk != nil {
		errs = append(errs, g.execLnk.Unpin())
	}
	for _, m := range []*ebpf.Map{g.maps.AaAgents, g.maps.AaRules, g.maps.AaExecRules, g.maps.AaEvents, g.maps.AaStats} {
		if m != nil && m.IsPinned() {
			errs = append(errs, m.Unpin())
		}
	}
	errs = append(errs, g.Close())
	if g.opts.PinPath != "" {
		os.Remove(filepath.Join(g.opts.PinPath, "links"))
		os.Remove(g.opts.PinPath)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("teardown governor: %w", err)
	}
	return nil
}

var _ io.Closer = (*Governor)(nil)

// ProgramStat is a program's accumulated run count and time, collected
// by the kernel while BPF statistics are enabled (EnableRunStats or the
// kernel.bpf_stats_enabled sysctl).
type ProgramStat struct {
	RunCount uint64
	Runtime  time.Duration
}

// ProgramStats returns the run statistics of the loaded programs.
func (g *Governor) ProgramStats() (map[Program]ProgramStat, error) {
	out := map[Program]ProgramStat{}
	for p, prog := range map[Program]*ebpf.Program{
		ProgConnect4: g.net.Connect4, ProgConnect6: g.net.Connect6,
		ProgSendmsg4: g.net.Sendmsg4, ProgSendmsg6: g.net.Sendmsg6, ProgExec: g.exec.Exec,
	} {
		if prog == nil {
			continue
		}
		st, err := prog.Stats()
		if err != nil {
			return nil, fmt.Errorf("read %s stats: %w", p, err)
		}
		out[p] = ProgramStat{RunCount: st.RunCount, Runtime: st.Runtime}
	}
	return out, nil
}

// EnableRunStats turns on the kernel's per-program run-time accounting
// (it costs a little on every run) until the returned Closer is closed.
func EnableRunStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable bpf run stats: %w", err)
	}
	return c, nil
}
