package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/internal/gatewaydial"
	"github.com/agent-assembly/agent-assembly/runtime/buffer"
	"github.com/agent-assembly/agent-assembly/scan"
)

// Runtime serves agents on their sockets and links them to the gateway.
type Runtime struct {
	opts    Options
	log     *slog.Logger
	scanner *scan.Scanner
	cache   *decisionCache
	agents  []*agentState
	now     func() time.Time

	buf       *buffer.Buffer
	conn      *grpc.ClientConn // owned when we dialled it
	policy    v1.PolicyServiceClient
	audit     v1.AuditServiceClient
	inval     v1.InvalidationServiceClient
	approvals v1.ApprovalServiceClient
	life      v1.AgentLifecycleServiceClient

	reachable atomic.Bool
	drops     atomic.Pointer[func() uint64] // kernel ring buffer losses, see ReportKernelDrops
	conns     sync.WaitGroup
	ready     chan struct{}
}

// agentState is one served agent.
type agentState struct {
	Agent
	pid      *v1.AgentId
	lastMode atomic.Int32           // the EnforcementMode of the agent's last gateway answer
	token    atomic.Pointer[string] // the credential token in use
	listener *net.UnixListener
}

// New validates opts and builds a Runtime; Run serves it.
func New(opts Options) (*Runtime, error) {
	opts.setDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	sc, err := scan.New(scan.Options{})
	if err != nil {
		return nil, fmt.Errorf("new runtime: build scanner: %w", err)
	}
	rt := &Runtime{opts: opts, log: opts.Logger, scanner: sc, now: time.Now, ready: make(chan struct{})}
	rt.cache = newDecisionCache(opts.CacheTTL, opts.CacheSize, rt.now)
	for _, a := range opts.Agents {
		st := &agentState{Agent: a, pid: &v1.AgentId{OrgId: a.ID.Org, TeamId: a.ID.Team, AgentId: a.ID.Agent}}
		st.token.Store(&a.Token)
		rt.agents = append(rt.agents, st)
	}
	return rt, nil
}

// Ready is closed once every socket listens.
func (rt *Runtime) Ready() <-chan struct{} { return rt.ready }

// Run opens the buffer, connects to the gateway, listens on every agent's
// socket and serves until ctx ends; then it stops accepting, lets requests
// in flight finish, and closes the buffer (which writes what is queued).
func (rt *Runtime) Run(ctx context.Context) (err error) {
	rt.buf, err = buffer.Open(ctx, rt.opts.BufferPath, rt.opts.Name)
	if err != nil {
		return fmt.Errorf("run runtime: %w", err)
	}
	defer func() {
		if cerr := rt.buf.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	cc := rt.opts.Conn
	if cc == nil {
		target, dialOpts, err := gatewaydial.Target(rt.opts.Gateway)
		if err != nil {
			return fmt.Errorf("run runtime: %w", err)
		}
		conn, err := grpc.NewClient(target, append(dialOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			return fmt.Errorf("run runtime: dial gateway %s: %w", rt.opts.Gateway, err)
		}
		rt.conn = conn
		defer rt.conn.Close()
		cc = conn
	}
	rt.policy, rt.audit, rt.inval = v1.NewPolicyServiceClient(cc), v1.NewAuditServiceClient(cc), v1.NewInvalidationServiceClient(cc)
	rt.approvals, rt.life = v1.NewApprovalServiceClient(cc), v1.NewAgentLifecycleServiceClient(cc)
	rt.reachable.Store(true)

	for _, a := range rt.agents {
		if err := rt.listen(a); err != nil {
			rt.closeListeners()
			return err
		}
	}
	n := rt.buf.Len()
	rt.log.Info("runtime serving", "agents", len(rt.agents), "gateway", rt.opts.Gateway,
		"buffer", rt.opts.BufferPath, "buffered_events", n, "fail_mode", rt.opts.FailMode, "reporter", rt.buf.Reporter())

	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); rt.forward(bg) }()
	go func() { defer wg.Done(); rt.subscribe(bg) }()
	connCtx, cancelConns := context.WithCancel(context.WithoutCancel(ctx))
	for _, a := range rt.agents {
		wg.Add(1)
		go func() { defer wg.Done(); rt.accept(connCtx, a) }()
		if rt.opts.Register && a.Token == "" {
			wg.Add(1)
			go func() { defer wg.Done(); rt.lifecycle(bg, a) }()
		}
	}
	close(rt.ready)
	<-ctx.Done()
	rt.log.Info("runtime stopping")
	rt.closeListeners()
	stopBG()
	cancelConns()
	rt.conns.Wait()
	wg.Wait()
	rt.flushOnStop(ctx)
	return nil
}

// stopFlushTimeout bounds the last attempt to forward buffered events.
const stopFlushTimeout = 3 * time.Second

// flushOnStop makes one bounded attempt to send what is still buffered (the
// last events of an agent that just exited, say). What cannot be sent stays
// on disk and goes out when the runtime next starts with this buffer.
func (rt *Runtime) flushOnStop(ctx context.Context) {
	if rt.buf.Len() == 0 {
		return
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopFlushTimeout)
	defer cancel()
	for {
		entries, err := rt.buf.Peek(fctx, forwardBatch)
		if err == nil && len(entries) == 0 {
			return
		}
		if err == nil {
			err = rt.send(fctx, entries)
		}
		if err != nil {
			rt.log.Warn("events stay buffered on disk; they are sent when the runtime next starts", "buffered_events", rt.buf.Len(), "err", err)
			return
		}
		if err := rt.buf.Ack(fctx, entries[len(entries)-1].Seq); err != nil {
			rt.log.Warn("ack forwarded events; they will be resent and deduplicated", "err", err)
			return
		}
	}
}

func (rt *Runtime) listen(a *agentState) error {
	if err := os.Remove(a.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("listen for agent %s: remove stale socket: %w", a.ID.String(), err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: a.Socket, Net: "unix"})
	if err != nil {
		return fmt.Errorf("listen for agent %s: %w", a.ID.String(), err)
	}
	l.SetUnlinkOnClose(true)
	if err := os.Chmod(a.Socket, 0o600); err != nil {
		_ = l.Close()
		return fmt.Errorf("listen for agent %s: chmod socket: %w", a.ID.String(), err)
	}
	if a.UID != os.Getuid() {
		if err := os.Chown(a.Socket, a.UID, -1); err != nil {
			_ = l.Close()
			return fmt.Errorf("listen for agent %s: give the socket to uid %d: %w", a.ID.String(), a.UID, err)
		}
	}
	a.listener = l
	return nil
}

func (rt *Runtime) closeListeners() {
	for _, a := range rt.agents {
		if a.listener != nil {
			_ = a.listener.Close()
		}
	}
}

// health describes the runtime.
func (rt *Runtime) health() *v1.RuntimeHealth {
	return &v1.RuntimeHealth{GatewayReachable: rt.reachable.Load(), BufferedEvents: rt.buf.Len(), CachedDecisions: int64(rt.cache.len())}
}

// Record queues an event another layer saw (the kernel programs, for
// example) for the gateway, with the next buffer write. Events without a
// time get the current time. It fails before Run has opened the buffer.
func (rt *Runtime) Record(ev *v1.ReportedEvent) error {
	if err := rt.prepare(ev); err != nil {
		return err
	}
	return rt.buf.Enqueue(ev)
}

// RecordWait is Record for a steady source (the kernel's verdicts): when
// the buffer's queue is full it waits for room until ctx ends, so a burst
// is held back (in the kernel's ring buffer) instead of lost here.
func (rt *Runtime) RecordWait(ctx context.Context, ev *v1.ReportedEvent) error {
	if err := rt.prepare(ev); err != nil {
		return err
	}
	return rt.buf.EnqueueWait(ctx, ev)
}

func (rt *Runtime) prepare(ev *v1.ReportedEvent) error {
	if rt.buf == nil {
		return errors.New("record event: the runtime is not running")
	}
	if ev.GetTime() == nil {
		ev.Time = timestamppb.New(rt.now())
	}
	if ev.GetAction() != nil {
		_, ev.Action = rescan(rt.scanner, ev.GetAction())
		ev.Action = withoutToken(ev.Action)
	}
	return nil
}

// ReportKernelDrops makes every ReportEvents call carry drops(): the
// running count of kernel verdicts the eBPF ring buffer lost (enforced but
// not audited), from which the gateway raises an ebpf_drops alert. Nil
// stops it.
func (rt *Runtime) ReportKernelDrops(drops func() uint64) {
	if drops == nil {
		rt.drops.Store(nil)
		return
	}
	rt.drops.Store(&drops)
}

// Flush waits until every buffered event has been acknowledged by the
// gateway, or ctx ends (then it returns how many are still on disk; they are
// sent by the next runtime that opens the buffer).
func (rt *Runtime) Flush(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		idle := rt.buf.Idle() // first: an event written after this is counted by Len
		n := rt.buf.Len()
		if idle && n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("flush runtime: %d events still buffered: %w", n, ctx.Err())
		case <-t.C:
		}
	}
}
