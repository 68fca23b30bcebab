package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/egress"
	"github.com/agent-assembly/agent-assembly/internal/gatewaydial"
	"github.com/agent-assembly/agent-assembly/policy"
)

// policyPollInterval is how often exec asks the gateway for the active
// policy version to keep the kernel rules in step.
const policyPollInterval = 2 * time.Second

// policyKernel keeps an agent's kernel rules derived from the gateway's
// active policy: egress allowlists (hosts resolved, refreshed on TTL) and
// exact-name process rules, as bpf/egress translates them.
type policyKernel struct {
	conn    *grpc.ClientConn
	policy  v1.PolicyServiceClient
	agent   action.AgentID
	token   func() string // the agent's current credential token ("" until registered)
	command string        // the agent's own executable, always allowed to exec
	log     *slog.Logger
	ea      *egress.Agent
	version string
	observe bool
	network bpf.NetworkMode // --ebpf's mode: what a failed-closed agent gets
	dns     *egress.DNSResolver
}

// newPolicyKernel connects to the gateway for policy reads, made as the
// agent (GetAgentPolicy with token's current value). Allowlist hosts are
// resolved by the nameservers of dns (--dns), else of resolvConf, and
// refreshed when their records' TTL runs out.
func newPolicyKernel(gateway string, agent action.AgentID, token func() string, command string, dns []string, log *slog.Logger) (*policyKernel, error) {
	res, err := dnsResolver(dns, resolvConf)
	if err != nil {
		return nil, err
	}
	target, opts, err := gatewaydial.Target(gateway) // one replica or several: a,b
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return nil, fmt.Errorf("dial gateway %s for the policy: %w", gateway, err)
	}
	return &policyKernel{conn: conn, policy: v1.NewPolicyServiceClient(conn), agent: agent, token: token, command: filepath.Base(command), log: log, dns: res}, nil
}

// dnsConfig is the kernel layer's resolver configuration: the search list
// and options of conf (a resolv.conf(5) file), and its nameservers unless dns
// (the --dns addresses, port 53) replaces them. With --dns given, an
// unreadable conf only loses the search list. The allowlist hosts are
// resolved with it, and its nameservers are always allowed.
func dnsConfig(dns []string, conf string) (egress.DNSConfig, error) {
	cfg, err := egress.ReadResolvConf(conf)
	if err != nil {
		if len(dns) == 0 {
			return cfg, fmt.Errorf("%w (pass --dns ADDR)", err)
		}
		cfg = egress.DNSConfig{Ndots: 1}
	}
	if len(dns) > 0 {
		cfg.Servers = nil
		for _, s := range dns {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return cfg, fmt.Errorf("--dns %q: not an IP address", s)
			}
			cfg.Servers = append(cfg.Servers, netip.AddrPortFrom(a, 53))
		}
	}
	return cfg, nil
}

// dnsResolver builds the resolver of allowlist hosts from dnsConfig.
func dnsResolver(dns []string, conf string) (*egress.DNSResolver, error) {
	cfg, err := dnsConfig(dns, conf)
	if err != nil {
		return nil, fmt.Errorf("resolver of allowlist hosts: %w", err)
	}
	r, err := egress.NewDNSResolver(cfg)
	if err != nil {
		return nil, fmt.Errorf("resolver of allowlist hosts: %w", err)
	}
	return r, nil
}

// plan fetches the active policy and compiles the agent's kernel plan.
func (k *policyKernel) plan(ctx context.Context) (string, egress.Plan, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := k.policy.GetAgentPolicy(ctx, &v1.GetAgentPolicyRequest{
		Agent:           &v1.AgentId{OrgId: k.agent.Org, TeamId: k.agent.Team, AgentId: k.agent.Agent},
		CredentialToken: k.token(),
	})
	if err != nil {
		return "", egress.Plan{}, fmt.Errorf("read the active policy: %w", err)
	}
	srcs := make([]policy.Source, len(info.GetDocuments()))
	for i, d := range info.GetDocuments() {
		srcs[i] = policy.Source{Name: d.GetName(), Data: []byte(d.GetYaml())}
	}
	docs, err := policy.ParseAll(srcs)
	if err != nil {
		return "", egress.Plan{}, fmt.Errorf("policy %s: %w", info.GetVersion(), err)
	}
	snap, err := policy.Compile(docs, info.GetVersion())
	if err != nil {
		return "", egress.Plan{}, fmt.Errorf("compile policy %s: %w", info.GetVersion(), err)
	}
	plan, err := egress.Compile(snap, k.agent, egress.Options{})
	if err != nil {
		// The version is returned too: run fails the agent closed on a
		// version whose rules do not fit (bpf.ErrCapacity).
		return info.GetVersion(), egress.Plan{}, fmt.Errorf("kernel rules of policy %s: %w", info.GetVersion(), err)
	}
	if k.observe {
		plan.Network = bpf.NetworkObserve // --ebpf observe: report, never block
	}
	if plan.ExecAllow != nil && !slices.Contains(plan.ExecAllow, k.command) {
		// The agent's own first exec is judged too; the runtime started it.
		plan.ExecAllow = append(plan.ExecAllow, k.command)
	}
	return info.GetVersion(), plan, nil
}

// attach governs the cgroup at path with base plus the policy's rules. If
// the policy cannot be read, the agent gets base alone: only the always-
// allowed destinations (fail closed), and it says so.
func (k *policyKernel) attach(ctx context.Context, gov *bpf.Governor, path string, base bpf.AgentConfig) error {
	k.observe = base.Network == bpf.NetworkObserve
	k.network = base.Network
	cfg := k.dns.Config()
	k.log.Info("allowlist hosts resolved by DNS, refreshed on their records' TTL", "nameservers", cfg.Servers, "search", cfg.Search,
		"min_ttl", cfg.MinTTL.String(), "max_ttl", cfg.MaxTTL.String(), "hosts_file", cfg.HostsFile)
	k.ea = egress.NewAgent(gov, path, egress.Config{Base: base, Resolver: k.dns, Logger: k.log, MinTTL: cfg.MinTTL})
	k.awaitToken(ctx, 10*time.Second)
	version, plan, err := k.plan(ctx)
	if err != nil {
		k.log.Error("eBPF egress from policy unavailable: the kernel denies all but the always-allowed destinations until the policy can be read", "err", err)
		plan = egress.Plan{Network: base.Network, Sets: [][]egress.Entry{{}}}
	}
	if err := k.ea.Apply(ctx, plan); err != nil {
		return err
	}
	k.version = version
	k.log.Info("kernel rules from policy", "version", version, "sets", len(plan.Sets), "exec_allow", plan.ExecAllow, "exec_deny", plan.ExecDeny, "unenforced", len(plan.Unenforced))
	return nil
}

// awaitToken waits up to max for the runtime to register the agent, so that
// the first policy read carries its credential (the gateway refuses it
// otherwise, and the agent would start on the always-allowed rules alone).
func (k *policyKernel) awaitToken(ctx context.Context, max time.Duration) {
	deadline := time.Now().Add(max)
	for k.token() == "" && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
}

// run refreshes DNS and follows policy versions until ctx ends.
func (k *policyKernel) run(ctx context.Context) {
	go func() { _ = k.ea.Run(ctx) }()
	t := time.NewTicker(policyPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		version, plan, err := k.plan(ctx)
		if err != nil && errors.Is(err, bpf.ErrCapacity) && version != "" && version != k.version {
			// Keeping the previous rules would enforce a policy that is no
			// longer active: fail closed until a version that fits.
			k.log.Error("kernel rules of the new policy do not fit the kernel maps: the agent is failed closed (always-allowed destinations only) until a policy that fits is active", "version", version, "err", err)
			plan, err = egress.Plan{Network: k.network, Sets: [][]egress.Entry{{}}}, nil
		}
		if err != nil || version == k.version {
			if err != nil && ctx.Err() == nil {
				k.log.Warn("policy not re-read for the kernel rules; the current ones stay", "err", err)
			}
			continue
		}
		if err := k.ea.Apply(ctx, plan); err != nil {
			k.log.Error("kernel rules of the new policy not applied; the previous ones stay", "version", version, "err", err)
			continue
		}
		k.log.Info("kernel rules follow the new policy", "version", version, "previous", k.version)
		k.version = version
	}
}

// close releases the policy connection.
func (k *policyKernel) close() { _ = k.conn.Close() }
