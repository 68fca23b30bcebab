// Package verdicts forwards the kernel's eBPF verdicts into the runtime's
// durable event buffer, as kernel-layer audit events for the gateway.
package verdicts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/egress"
)

// Recorder takes events for the gateway, waiting for room when it is busy;
// *runtime.Runtime is one.
type Recorder interface {
	RecordWait(ctx context.Context, ev *v1.ReportedEvent) error
}

// Reader yields kernel verdicts; *bpf.EventReader is one.
type Reader interface {
	Read(ev *bpf.Event) error
	Pending() int
	Close() error
}

var _ Reader = (*bpf.EventReader)(nil)

// Hosts names the host names an address was resolved from by the runtime's
// resolver (nil when none); (*egress.Agent).Resolved feeds one, see
// HostIndex.
type Hosts func(netip.Addr) []string

// Options configures a Pump.
type Options struct {
	// Agent is the agent whose cgroup the verdicts come from.
	Agent *v1.AgentId
	// Hosts, when set, annotates network verdicts with the host names
	// their address was resolved from (ReportedEvent.resolved_hosts).
	Hosts Hosts
	// Logger receives events that could not be buffered. Default: discard.
	Logger *slog.Logger
	// Drain bounds how long Stop waits for the ring buffer to empty.
	// Default 1s.
	Drain time.Duration
}

// Pump reads verdicts from a Reader into a Recorder until stopped.
type Pump struct {
	rd       Reader
	opts     Options
	done     chan struct{}
	cancel   context.CancelFunc
	stop     sync.Once
	recorded atomic.Int64
	failed   atomic.Int64
}

// Start starts pumping rd into rec.
func Start(rd Reader, rec Recorder, opts Options) *Pump {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Drain <= 0 {
		opts.Drain = time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pump{rd: rd, opts: opts, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(p.done)
		var ev bpf.Event
		for {
			if err := rd.Read(&ev); err != nil {
				if !errors.Is(err, bpf.ErrClosed) {
					opts.Logger.Error("eBPF events: read ring buffer", "err", err)
				}
				return
			}
			var hosts []string
			if opts.Hosts != nil && ev.Program != bpf.ProgExec {
				hosts = opts.Hosts(ev.Destination.Addr().Unmap())
			}
			if err := rec.RecordWait(ctx, Event(opts.Agent, &ev, hosts)); err != nil {
				p.failed.Add(1)
				opts.Logger.Warn("kernel event not buffered", "err", err)
				continue
			}
			p.recorded.Add(1)
		}
	}()
	return p
}

// Recorded counts the verdicts handed to the Recorder.
func (p *Pump) Recorded() int64 { return p.recorded.Load() }

// Failed counts the verdicts the Recorder refused (lost).
func (p *Pump) Failed() int64 { return p.failed.Load() }

// Stop drains what the programs wrote so far (bounded by Options.Drain),
// closes the reader and waits for the event being recorded (bounded by
// Options.Drain too). It may be called more than once.
func (p *Pump) Stop() {
	p.stop.Do(func() {
		deadline := time.Now().Add(p.opts.Drain)
		for p.rd.Pending() > 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		_ = p.rd.Close() // Read returns ErrClosed; an event being recorded is finished first
		select {
		case <-p.done:
		case <-time.After(time.Until(deadline) + p.opts.Drain):
			p.cancel() // the recorder is stuck: give up on the event in hand
			<-p.done
		}
		p.cancel()
	})
}

// Event renders a kernel verdict as an audit event of agent. hosts are the
// names the destination address was resolved from (network verdicts).
func Event(agent *v1.AgentId, ev *bpf.Event, hosts []string) *v1.ReportedEvent {
	req := &v1.CheckActionRequest{Agent: agent}
	if ev.Program == bpf.ProgExec {
		req.ActionType = v1.ActionType_PROCESS_EXEC
		req.Context = &v1.CheckActionRequest_ProcessExec{ProcessExec: &v1.ProcessExecContext{Command: ev.Filename, Args: ev.Args}}
		hosts = nil
	} else {
		proto := "tcp"
		if ev.Program == bpf.ProgSendmsg4 || ev.Program == bpf.ProgSendmsg6 {
			proto = "udp"
		}
		req.ActionType = v1.ActionType_NETWORK_CALL
		req.Context = &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{
			Host: ev.Destination.Addr().String(), Port: uint32(ev.Destination.Port()), Protocol: proto}}
	}
	d := v1.Decision_ALLOW
	if ev.Verdict == bpf.VerdictDeny || ev.Verdict == bpf.VerdictKill {
		d = v1.Decision_DENY
	}
	reason := ev.Verdict.String()
	if r := ev.Reason.String(); r != "" {
		reason += ": " + r
	}
	if ev.Verdict == bpf.VerdictRedirect {
		reason += fmt.Sprintf("; sent to the Envoy egress listener on port %d", ev.RedirectPort)
	}
	if len(hosts) > maxHosts {
		hosts = hosts[:maxHosts]
	}
	return &v1.ReportedEvent{
		Layer: v1.Layer_LAYER_KERNEL, Time: timestamppb.New(ev.Time), Action: req, Decision: d,
		RuleId: "kernel/" + ev.Program.String(), Reason: reason + " " + ProcInfo(ev), ResolvedHosts: hosts,
	}
}

// maxHosts is the gateway's limit on ReportedEvent.resolved_hosts.
const maxHosts = 16

// ProcInfo describes the process of a verdict as the audit reason shows it:
// "(pid N, uid N[, comm C])".
func ProcInfo(ev *bpf.Event) string {
	if ev.Comm == "" {
		return fmt.Sprintf("(pid %d, uid %d)", ev.PID, ev.UID)
	}
	return fmt.Sprintf("(pid %d, uid %d, comm %s)", ev.PID, ev.UID, ev.Comm)
}

// Stater reports the kernel-side counters; *bpf.Governor is one.
type Stater interface {
	Stats() (bpf.Stats, error)
}

var _ Stater = (*bpf.Governor)(nil)

// Drops returns the running count of verdicts g's ring buffer lost, for
// (*runtime.Runtime).ReportKernelDrops. A failure to read the counters is
// logged (once per failure streak) and reported as the last count read.
func Drops(g Stater, log *slog.Logger) func() uint64 {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var mu sync.Mutex
	var last uint64
	failing := false
	return func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		st, err := g.Stats()
		if err != nil {
			if !failing {
				log.Warn("eBPF counters unreadable: ring buffer drops are not reported", "err", err)
			}
			failing = true
			return last
		}
		failing = false
		last = max(last, st.Drops)
		return last
	}
}

// HostIndex returns a Hosts that looks an address up in what resolved
// returns now ((*egress.Agent).Resolved): every host whose current
// addresses include it, in host order. Names the gateway would refuse (not
// a DNS name, over 253 bytes) are left out.
func HostIndex(resolved func() []egress.Resolution) Hosts {
	return func(addr netip.Addr) []string {
		var out []string
		for _, r := range resolved() {
			if !hostName(r.Host) {
				continue
			}
			for _, a := range r.Addrs {
				if a.Unmap() == addr {
					out = append(out, r.Host)
					break
				}
			}
		}
		return out
	}
}

// hostName reports whether h is a host name the gateway accepts in
// resolved_hosts.
func hostName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}
