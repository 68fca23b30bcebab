// Command aa-load drives PolicyService.CheckAction (or, with -target
// extauthz, Envoy's ext_authz Check as a sidecar sends it) against a gateway, closed
// loop (as fast as N clients can go) or open loop at a fixed rate, and
// reports throughput and latency percentiles, with the gateway's own
// latency histogram over the same run when its /metrics can be scraped, and
// the machine's CPU load and hypervisor steal over the run (Linux).
//
// In open loop, a request's latency runs from the moment the generator was
// ready to send it: after its own timer woke up, but before it waited for
// a free slot among -concurrency requests in flight. A stalled gateway
// therefore shows up in the percentiles instead of silently lowering the
// rate (no coordinated omission), while the generator's own timer lateness
// (Go's timers wake up to about a millisecond late on an idle process) is
// not charged to the gateway. That lateness is reported separately as the
// send lag, and the latency counted from the schedule as well.
package main

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// options are the command's flags.
type options struct {
	addr        string
	rate        float64
	duration    time.Duration
	warmup      time.Duration
	concurrency int
	conns       int
	json        bool
	target      string
	token       string
	metrics     string
}

// Report is the result of one run.
type Report struct {
	Mode       string        `json:"mode"`
	TargetRate float64       `json:"target_rate,omitempty"`
	Duration   time.Duration `json:"duration_ns"`
	Requests   int           `json:"requests"`
	Errors     int           `json:"errors"`
	Throughput float64       `json:"throughput_per_s"`
	P50        time.Duration `json:"p50_ns"`
	P90        time.Duration `json:"p90_ns"`
	P99        time.Duration `json:"p99_ns"`
	P999       time.Duration `json:"p999_ns"`
	Max        time.Duration `json:"max_ns"`
	// Open loop only: how late the generator sent after each request's
	// scheduled time (its own timer lateness, not the gateway's), and the
	// latency counted from the schedule instead of from the send.
	LagP50       time.Duration `json:"send_lag_p50_ns,omitempty"`
	LagP99       time.Duration `json:"send_lag_p99_ns,omitempty"`
	ScheduledP50 time.Duration `json:"scheduled_p50_ns,omitempty"`
	ScheduledP99 time.Duration `json:"scheduled_p99_ns,omitempty"`
	FirstError   string        `json:"first_error,omitempty"`
	// Server is the gateway's own latency histogram over the run (see
	// ServerLatency), when -metrics could be scraped.
	Server *ServerLatency `json:"server,omitempty"`
	// Machine is the machine's CPU load over the run (see MachineCPU), on
	// Linux.
	Machine *MachineCPU `json:"machine,omitempty"`
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:50051", "gateway gRPC address")
	flag.Float64Var(&o.rate, "rate", 0, "open loop: requests per second (0 = closed loop)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured duration")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured warm-up before the run")
	flag.IntVar(&o.concurrency, "concurrency", 64, "closed loop: concurrent clients; open loop: maximum requests in flight")
	flag.IntVar(&o.conns, "conns", 4, "gRPC connections the clients share")
	flag.BoolVar(&o.json, "json", false, "print the report as JSON")
	flag.StringVar(&o.target, "target", "checkaction", "what to call: checkaction (PolicyService.CheckAction, a coding agent's git_status), extauthz (ext_authz Check of a research agent's GET https://en.wikipedia.org/wiki/Envoy, identified by SPIFFE id), or health (the gateway's gRPC health Check, which decides nothing: the floor of a round trip to the gateway on this machine)")
	flag.StringVar(&o.metrics, "metrics", "http://127.0.0.1:7700/metrics", "the gateway's /metrics, scraped before and after the run to report its own latency histogram beside the client's (empty: do not)")
	flag.StringVar(&o.token, "token", "", "credential token of the synthetic agent (default: register acme/eng/coder-1 or acme/research/researcher-1 through the challenge, and deregister it at the end)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "aa-load:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, out io.Writer) error {
	if o.concurrency < 1 || o.conns < 1 || o.duration <= 0 || o.rate < 0 {
		return errors.New("-concurrency and -conns must be at least 1, -duration positive, -rate not negative")
	}
	if o.target != "checkaction" && o.target != "extauthz" && o.target != "health" {
		return fmt.Errorf("-target must be checkaction, extauthz or health, not %q", o.target)
	}
	agent := checkAgent
	if o.target == "extauthz" {
		agent = extauthzAgent
	}
	token := o.token
	if token == "" && o.target != "health" {
		// The gateway authenticates agents (--agent-auth token): register
		// the synthetic agent through the challenge, and deregister it at
		// the end so the next run can register it again with a new key.
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		tok, deregister, err := registerAgent(rctx, o.addr, agent)
		cancel()
		if err != nil {
			return err
		}
		defer deregister()
		token = tok
	}
	calls := make([]checkFunc, o.conns)
	for i := range calls {
		conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return fmt.Errorf("connect %s: %w", o.addr, err)
		}
		defer conn.Close()
		calls[i] = newCheck(o.target, conn, token)
	}
	// Fail fast when the gateway is not there, or refuses the agent.
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := calls[0](pctx, grpc.WaitForReady(true))
	cancel()
	if err != nil {
		return fmt.Errorf("first check against %s: %w", o.addr, err)
	}
	if o.warmup > 0 {
		wo := o
		wo.duration = o.warmup
		measure(ctx, wo, calls)
	}
	metric := serverMetric(o.target)
	var before histogram
	var scrapeErr error
	if o.metrics != "" && metric != "" {
		before, scrapeErr = scrapeHistogram(ctx, o.metrics, metric)
	}
	cpu0, cpuErr := sampleCPU()
	rep := measure(ctx, o, calls)
	if cpu1, err := sampleCPU(); cpuErr == nil && err == nil {
		rep.Machine = machineCPU(cpu0, cpu1)
	}
	if o.metrics != "" && metric != "" && scrapeErr == nil {
		var after histogram
		if after, scrapeErr = scrapeHistogram(ctx, o.metrics, metric); scrapeErr == nil {
			rep.Server, scrapeErr = serverLatency(metric, before, after)
		}
	}
	if scrapeErr != nil {
		fmt.Fprintf(os.Stderr, "aa-load: gateway-side latency not reported: %v (set -metrics to the gateway's /metrics, or -metrics '' to skip it)\n", scrapeErr)
	}
	if o.json {
		return json.NewEncoder(out).Encode(rep)
	}
	fmt.Fprintf(out, "%s: %d requests in %s, %.0f/s, %d errors\n", rep.Mode, rep.Requests, rep.Duration.Round(time.Millisecond), rep.Throughput, rep.Errors)
	fmt.Fprintf(out, "latency p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n", rep.P50, rep.P90, rep.P99, rep.P999, rep.Max)
	if rep.LagP99 > 0 {
		fmt.Fprintf(out, "(latency from the send; generator send lag p50 %s  p99 %s; from the schedule p50 %s  p99 %s)\n", rep.LagP50, rep.LagP99, rep.ScheduledP50, rep.ScheduledP99)
	}
	if rep.Server != nil {
		printServerLatency(out, rep.Server)
	}
	if rep.Machine != nil {
		printMachine(out, rep.Machine)
	}
	if rep.FirstError != "" {
		fmt.Fprintf(out, "first error: %s\n", rep.FirstError)
	}
	return nil
}

// measure runs one closed- or open-loop phase.
func measure(ctx context.Context, o options, calls []checkFunc) Report {
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	var (
		mu       sync.Mutex
		lat      []time.Duration
		errs     atomic.Int64
		firstErr atomic.Value
		wg       sync.WaitGroup
	)
	record := func(local []time.Duration) {
		mu.Lock()
		lat = append(lat, local...)
		mu.Unlock()
	}
	call := func(i int) error {
		err := calls[i%len(calls)](context.WithoutCancel(ctx))
		if err != nil {
			errs.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
		}
		return err
	}
	start := time.Now()
	rep := Report{Mode: "closed loop", TargetRate: o.rate}
	if o.rate == 0 {
		for w := 0; w < o.concurrency; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				var local []time.Duration
				for ctx.Err() == nil {
					t0 := time.Now()
					if call(w) == nil {
						local = append(local, time.Since(t0))
					}
				}
				record(local)
			}(w)
		}
	} else {
		rep.Mode = fmt.Sprintf("open loop at %.0f/s", o.rate)
		interval := time.Duration(float64(time.Second) / o.rate)
		slots := make(chan struct{}, o.concurrency)
		var sent, lag, sched []time.Duration // latency from the send, send lag, latency from the schedule
		var lmu sync.Mutex
		for i := 0; ; i++ {
			due := start.Add(time.Duration(i) * interval)
			if d := time.Until(due); d > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(d):
				}
			}
			if ctx.Err() != nil {
				break
			}
			ready := time.Now()
			slots <- struct{}{} // beyond -concurrency in flight, the wait counts as latency
			wg.Add(1)
			go func(i int, due, ready time.Time) {
				defer wg.Done()
				defer func() { <-slots }()
				if call(i) == nil {
					end := time.Now()
					lmu.Lock()
					sent = append(sent, end.Sub(ready))
					sched = append(sched, end.Sub(due))
					lag = append(lag, ready.Sub(due))
					lmu.Unlock()
				}
			}(i, due, ready)
		}
		wg.Wait()
		record(sent)
		if n := len(lag); n > 0 {
			slices.Sort(lag)
			slices.Sort(sched)
			rep.LagP50, rep.LagP99 = lag[n/2], lag[min(n-1, n*99/100)]
			rep.ScheduledP50, rep.ScheduledP99 = sched[n/2], sched[min(n-1, n*99/100)]
		}
	}
	wg.Wait()
	rep.Duration = time.Since(start)
	slices.Sort(lat)
	rep.Requests, rep.Errors = len(lat)+int(errs.Load()), int(errs.Load())
	rep.Throughput = float64(len(lat)) / rep.Duration.Seconds()
	if s, ok := firstErr.Load().(string); ok {
		rep.FirstError = s
	}
	if n := len(lat); n > 0 {
		q := func(p float64) time.Duration { return lat[min(n-1, int(p*float64(n)))] }
		rep.P50, rep.P90, rep.P99, rep.P999, rep.Max = q(0.5), q(0.9), q(0.99), q(0.999), lat[n-1]
	}
	return rep
}

// checkFunc sends one check; an error is a transport or gateway failure
// (a denial is an answer, not an error).
type checkFunc func(ctx context.Context, opts ...grpc.CallOption) error

// The synthetic agents: a coding agent for checkaction, a research agent
// for extauthz (both governed by examples/policies).
var (
	checkAgent    = &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"}
	extauthzAgent = &v1.AgentId{OrgId: "acme", TeamId: "research", AgentId: "researcher-1"}
)

// registerAgent registers agent through the Ed25519 challenge with a fresh
// key and returns its credential token and a function that deregisters it.
func registerAgent(ctx context.Context, addr string, agent *v1.AgentId) (string, func(), error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	life := v1.NewAgentLifecycleServiceClient(conn)
	name := agent.GetOrgId() + "/" + agent.GetTeamId() + "/" + agent.GetAgentId()
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		conn.Close()
		return "", nil, fmt.Errorf("register %s: %w", name, err)
	}
	ch, err := life.RequestChallenge(ctx, &v1.RequestChallengeRequest{Agent: agent}, grpc.WaitForReady(true))
	if err != nil {
		conn.Close()
		return "", nil, fmt.Errorf("register %s: request challenge from %s: %w", name, addr, err)
	}
	resp, err := life.Register(ctx, &v1.RegisterRequest{Agent: agent, PublicKey: pub, Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(key, ch.GetNonce()), Labels: map[string]string{"tool": "aa-load"}})
	if err != nil {
		conn.Close()
		return "", nil, fmt.Errorf("register %s: %w (an earlier aa-load that did not finish leaves it registered with its key: deregister it, or pass -token)", name, err)
	}
	tok := resp.GetCredentialToken()
	return tok, func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = life.Deregister(dctx, &v1.DeregisterRequest{Agent: agent, CredentialToken: tok})
		conn.Close()
	}, nil
}

// newCheck returns the call the target makes over conn as the agent whose
// credential token is token.
func newCheck(target string, conn *grpc.ClientConn, token string) checkFunc {
	if target == "health" {
		c := healthpb.NewHealthClient(conn)
		req := &healthpb.HealthCheckRequest{}
		return func(ctx context.Context, opts ...grpc.CallOption) error {
			_, err := c.Check(ctx, req, opts...)
			return err
		}
	}
	if target == "extauthz" {
		c := authv3.NewAuthorizationClient(conn)
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			// As the gateway's xDS configures a sidecar: the agent in the
			// route's context extensions, corroborated by its token.
			ContextExtensions: map[string]string{"aa_org": "acme", "aa_team": "research", "aa_agent": "researcher-1",
				"aa_credential_token": token},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Host: "en.wikipedia.org", Path: "/wiki/Envoy", Scheme: "https", Protocol: "HTTP/1.1",
				Headers: map[string]string{":authority": "en.wikipedia.org", ":method": "GET", ":path": "/wiki/Envoy", "user-agent": "aa-load"},
			}},
		}}
		return func(ctx context.Context, opts ...grpc.CallOption) error {
			resp, err := c.Check(ctx, req, opts...)
			if err == nil && resp.GetDeniedResponse() != nil && strings.Contains(resp.GetDeniedResponse().GetBody(), `"rule":"agent-auth"`) {
				return errors.New("ext_authz refused the agent: " + resp.GetDeniedResponse().GetBody())
			}
			return err
		}
	}
	c := v1.NewPolicyServiceClient(conn)
	req := &v1.CheckActionRequest{
		Agent:           checkAgent,
		CredentialToken: token,
		TraceId:         "aa-load",
		Context:         &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_status", ArgsJson: `{"short":true}`}},
	}
	return func(ctx context.Context, opts ...grpc.CallOption) error {
		_, err := c.CheckAction(ctx, req, opts...)
		return err
	}
}
