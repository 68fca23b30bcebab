package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/runtime"
	"github.com/agent-assembly/agent-assembly/runtime/cgroup"
	"github.com/agent-assembly/agent-assembly/runtime/verdicts"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func execCmd(args []string) int {
	fs := flag.NewFlagSet("aa-runtime exec", flag.ContinueOnError)
	var c common
	c.bind(fs)
	agent := fs.String("agent", os.Getenv("AA_AGENT_ID"), "the agent to start: org/team/agent[,uid=N][,token=T] ($AA_AGENT_ID)")
	cgRoot := fs.String("cgroup-root", "", "parent of the agent's cgroup (default: <cgroup v2 mount>/agent-assembly)")
	noCgroup := fs.Bool("no-cgroup", false, "run the agent without its own cgroup (no kernel enforcement possible)")
	ebpfMode := fs.String("ebpf", "off", `kernel enforcement on the agent's cgroup: "off", "observe" (report, never block) or "enforce" (deny egress the policy does not allow, kill execs it denies)`)
	var egress, execDeny, dns listFlag
	fs.Var(&egress, "egress", "allowed destination for --ebpf: CIDR or address, optionally :port (repeatable); when --egress or --exec-deny is given they replace the rules derived from the gateway's active policy")
	fs.Var(&dns, "dns", "DNS resolver (IP address) the agent always reaches on port 53 under --ebpf (repeatable; default: the nameservers of /etc/resolv.conf), also asked by the runtime for the policy's allowlist hosts; the gateway and --envoy-egress are always reachable too")
	fs.Var(&execDeny, "exec-deny", "executable (base name or absolute path) the kernel kills for --ebpf (repeatable; see --egress)")
	metricsAddr := fs.String("metrics", "", "with --ebpf: serve the kernel layer's Prometheus metrics (aa_bpf_events_total, aa_bpf_ringbuf_drops_total, aa_bpf_governed_cgroups) at /metrics on this address, e.g. 127.0.0.1:9464 (default: off)")
	envoyEgress := fs.String("envoy-egress", "127.0.0.1:15001", "the local Envoy egress listener that the kernel sends the agent's TCP to when its policy says network.enforcement: redirect")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: aa-runtime exec --agent org/team/agent [flags] -- CMD [ARGS...]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	argv := fs.Args()
	if *agent == "" || len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "aa-runtime exec: --agent and a command after -- are required")
		fs.Usage()
		return 2
	}
	log, err := newLogger(c.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "aa-runtime exec:", err)
		return 2
	}
	a, err := parseAgent(*agent, c.socketDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "aa-runtime exec:", err)
		return 2
	}
	a.Socket = strings.TrimSuffix(a.Socket, ".sock") + "." + strconv.Itoa(os.Getpid()) + ".sock"
	kcfg, err := kernelConfig(*ebpfMode, egress, execDeny)
	var always []bpf.Destination // the gateway, DNS, Envoy: reachable whatever the policy says
	if err != nil {
		fmt.Fprintln(os.Stderr, "aa-runtime exec:", err)
		return 2
	}
	if kcfg != nil {
		ap, err := netip.ParseAddrPort(*envoyEgress)
		if err != nil || !ap.Addr().Is4() {
			fmt.Fprintf(os.Stderr, "aa-runtime exec: --envoy-egress %q must be an IPv4 address:port\n", *envoyEgress)
			return 2
		}
		kcfg.Redirect = ap
		// Bad input is refused here, before anything is loaded: later, a
		// configuration the maps cannot hold would leave the agent running
		// without kernel enforcement.
		if err := kcfg.Validate(bpf.Limits{}); err != nil {
			fmt.Fprintf(os.Stderr, "aa-runtime exec: --egress/--exec-deny: %v\n", err)
			return 2
		}
		if always, err = alwaysAllowed(c.gateway, dns, resolvConf, ap); err != nil {
			fmt.Fprintf(os.Stderr, "aa-runtime exec: always-allowed destinations of --ebpf: %v\n", err)
			return 2
		}
	}
	var reg *prometheus.Registry // the kernel layer's metrics, with --metrics
	if *metricsAddr != "" {
		if kcfg == nil {
			fmt.Fprintln(os.Stderr, "aa-runtime exec: --metrics needs --ebpf observe or enforce")
			return 2
		}
		reg = prometheus.NewRegistry()
		stopMetrics, err := serveMetrics(*metricsAddr, reg, log)
		if err != nil {
			fmt.Fprintln(os.Stderr, "aa-runtime exec:", err)
			return 2
		}
		defer stopMetrics()
	}
	if err := os.MkdirAll(filepath.Dir(a.Socket), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "aa-runtime exec:", err)
		return 1
	}

	var group *cgroup.Group
	if !*noCgroup && *cgRoot == "" {
		if *cgRoot, err = cgroup.DefaultRoot(); err != nil {
			fmt.Fprintf(os.Stderr, "aa-runtime exec: %v\n(mount cgroup v2, or pass --no-cgroup to run without kernel enforcement)\n", err)
			return 1
		}
	}
	if !*noCgroup {
		if group, err = cgroup.Create(*cgRoot, a.ID.Org+"."+a.ID.Team+"."+a.ID.Agent); err != nil {
			fmt.Fprintf(os.Stderr, "aa-runtime exec: %v\n(run as root with cgroup v2 mounted, or pass --no-cgroup to run without kernel enforcement)\n", err)
			return 1
		}
		defer func() {
			if err := group.Remove(); err != nil {
				log.Error("remove agent cgroup", "err", err)
			}
		}()
		a.Group = group
		log.Info("agent cgroup", "path", group.Path)
	}

	// A kill from the gateway (aasm agent kill) ends the agent and everything
	// it started: the whole cgroup when there is one.
	var child atomic.Pointer[os.Process]
	a.OnControl = func(cmd *v1.ControlCommand) {
		if cmd.GetType() != v1.ControlCommand_TYPE_KILL {
			return
		}
		log.Warn("agent killed by the gateway", "agent", a.ID.String(), "reason", cmd.GetReason())
		if group != nil {
			_ = group.Kill()
		}
		if p := child.Load(); p != nil {
			_ = p.Kill()
		}
	}
	rt, err := runtime.New(c.options([]runtime.Agent{a}, log))
	if err != nil {
		fmt.Fprintln(os.Stderr, "aa-runtime exec:", err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	select {
	case <-rt.Ready():
	case err := <-done:
		cancel()
		log.Error("runtime failed", "err", err)
		return 1
	}
	stopRuntime := func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				log.Error("runtime stopped with an error", "err", err)
			}
		case <-time.After(15 * time.Second):
			log.Error("runtime did not stop within 15s")
		}
	}

	// The eBPF hook: programs are attached to the cgroup before the agent's
	// first process enters it, and their events go to the gateway through
	// the runtime's buffer as kernel-layer events.
	var stopKernel func()
	if kcfg != nil {
		if group == nil {
			log.Warn("eBPF requested but --no-cgroup given: no kernel enforcement")
		} else {
			var pk *policyKernel
			if len(egress) == 0 && len(execDeny) == 0 {
				if pk, err = newPolicyKernel(c.gateway, a.ID, func() string { return rt.Token(a.ID) }, argv[0], dns, log); err != nil {
					log.Error("eBPF rules from policy unavailable", "err", err)
				}
			}
			stopKernel = attachKernel(rt, group, a, *kcfg, always, reg, pk, log)
		}
	}
	defer func() {
		if stopKernel != nil {
			stopKernel()
		}
	}()

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "AA_RUNTIME_SOCKET="+a.Socket, "AA_AGENT_ID="+a.ID.String())
	// The agent dies with its runtime (fail closed): a runtime killed with
	// SIGKILL cannot detach cleanly, and its unpinned eBPF programs go with
	// it, so the agent must not outlive it ungoverned. (The signal follows
	// the OS thread that starts the agent; Go ends threads only when a
	// goroutine exits locked to one, which this code never does.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if a.UID != os.Getuid() {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(a.UID), Gid: uint32(a.UID)}
	}
	if group != nil {
		group.Prepare(cmd)
	}
	if err := cmd.Start(); err != nil {
		stopRuntime()
		fmt.Fprintf(os.Stderr, "aa-runtime exec: start %s: %v\n", argv[0], err)
		return 127
	}
	child.Store(cmd.Process)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	err = cmd.Wait()
	signal.Stop(sigs)
	close(sigs)
	if stopKernel != nil {
		stopKernel() // reads the verdicts still in the ring buffer into the runtime
		stopKernel = nil
	}
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := rt.Flush(fctx); err != nil {
		log.Warn("events left in the buffer for the next runtime", "err", err)
	}
	fcancel()
	stopRuntime()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	case err != nil:
		code = 1
	}
	log.Info("agent exited", "agent", a.ID.String(), "code", code)
	return code
}

// kernelConfig builds the eBPF configuration of --ebpf, or nil when off.
func kernelConfig(mode string, egress, execDeny []string) (*bpf.AgentConfig, error) {
	cfg := &bpf.AgentConfig{ID: 1}
	switch mode {
	case "off", "":
		return nil, nil
	case "observe":
		cfg.Network, cfg.Exec = bpf.NetworkObserve, bpf.ExecObserve
	case "enforce":
		cfg.Network, cfg.Exec = bpf.NetworkDeny, bpf.ExecEnforce
	default:
		return nil, fmt.Errorf("--ebpf %q must be off, observe or enforce", mode)
	}
	for i, e := range egress {
		d, err := parseDestination(e)
		if err != nil {
			return nil, fmt.Errorf("--egress %q: %w", e, err)
		}
		d.ID = uint32(i + 1)
		cfg.Egress = append(cfg.Egress, d)
	}
	for i, n := range execDeny {
		cfg.ExecDeny = append(cfg.ExecDeny, bpf.ExecRule{Name: n, ID: uint32(i + 1)})
	}
	return cfg, nil
}

// parseDestination reads "10.0.0.0/8", "1.2.3.4", "1.2.3.4:443" or "[::1]:443".
func parseDestination(s string) (bpf.Destination, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return bpf.Destination{Prefix: netip.PrefixFrom(ap.Addr(), ap.Addr().BitLen()), Ports: []uint16{ap.Port()}}, nil
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return bpf.Destination{Prefix: p.Masked()}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return bpf.Destination{Prefix: netip.PrefixFrom(a, a.BitLen())}, nil
	}
	return bpf.Destination{}, errors.New("not a CIDR, address or address:port")
}

// attachKernel governs the cgroup with the eBPF programs and pumps their
// events into the runtime. When eBPF is unavailable it says so loudly and
// returns nil: the agent then runs with L1 (and L2) only.
//
// With pk, the rules come from the gateway's active policy (and follow it);
// without, cfg holds them (--egress, --exec-deny).
func attachKernel(rt *runtime.Runtime, g *cgroup.Group, a runtime.Agent, cfg bpf.AgentConfig, always []bpf.Destination, reg *prometheus.Registry, pk *policyKernel, log *slog.Logger) func() {
	// Pinned per cgroup, so the kernel keeps governing what is left in the
	// agent's cgroup if this process dies; unpinned when bpffs is missing.
	sweepExecPins(filepath.Dir(g.Path), log)
	pin, err := execPinDir(g.Path)
	var gov *bpf.Governor
	if err == nil {
		// The cgroup was just created: pins under its id are a dead
		// runtime's, left for an earlier cgroup whose id was reused. Loading
		// them would resume that runtime's rules.
		if err = os.RemoveAll(pin); err == nil {
			gov, err = bpf.Open(bpf.Options{Logger: log, PinPath: pin, Always: always})
		}
	}
	if err != nil {
		log.Warn("eBPF pinning unavailable: enforcement ends if aa-runtime dies (the agent is killed with it)", "err", err)
		gov, err = bpf.Open(bpf.Options{Logger: log, NoPin: true, Always: always})
	}
	if err != nil {
		log.Error("eBPF UNAVAILABLE: the agent runs WITHOUT kernel enforcement", "err", err)
		return nil
	}
	names := make([]string, len(always))
	for i, d := range always {
		names[i] = d.String()
	}
	log.Info("eBPF always-allowed destinations (gateway, DNS resolvers, Envoy egress listener)", "destinations", names)
	kctx, kcancel := context.WithCancel(context.Background())
	if pk != nil {
		err = pk.attach(kctx, gov, g.Path, cfg)
	} else {
		err = gov.Govern(g.Path, cfg)
	}
	if err != nil {
		log.Error("eBPF attach FAILED: the agent runs WITHOUT kernel enforcement", "cgroup", g.Path, "err", err)
		kcancel()
		_ = gov.Teardown()
		return nil
	}
	if pk != nil {
		go pk.run(kctx)
		log.Info("eBPF programs attached", "cgroup", g.Path, "network", cfg.Network.String(), "rules", "from policy")
	} else {
		log.Info("eBPF programs attached", "cgroup", g.Path, "network", cfg.Network.String(), "egress", len(cfg.Egress), "exec_deny", len(cfg.ExecDeny))
	}
	var collector *bpf.Collector
	if reg != nil {
		collector = bpf.NewCollector(gov)
		reg.MustRegister(collector)
	}
	teardown := func() {
		if collector != nil {
			reg.Unregister(collector)
		}
		_ = gov.Teardown() // detach, unpin, remove the pin directory
	}
	rd, err := gov.Events()
	if err != nil {
		log.Error("eBPF events unavailable: kernel verdicts are enforced but not audited", "err", err)
		return func() {
			kcancel()
			if pk != nil {
				pk.close()
			}
			teardown()
		}
	}
	opts := verdicts.Options{Agent: &v1.AgentId{OrgId: a.ID.Org, TeamId: a.ID.Team, AgentId: a.ID.Agent}, Logger: log}
	if pk != nil {
		opts.Hosts = verdicts.HostIndex(pk.ea.Resolved) // network verdicts name the policy hosts their address came from
	}
	pump := verdicts.Start(rd, rt, opts)
	drops := verdicts.Drops(gov, log)
	rt.ReportKernelDrops(drops)
	return func() {
		// Drain what the programs wrote before the agent exited (the pump
		// takes it into the buffer), then stop the pump and detach.
		pump.Stop()
		// The final flush still reports the drop count: freeze it before
		// the maps it is read from are closed.
		last := drops()
		rt.ReportKernelDrops(func() uint64 { return last })
		kcancel()
		if pk != nil {
			pk.close()
		}
		teardown()
	}
}
