package extauthz

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/groupcommit"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// deadlineFake is a Decider that declares it honours CheckOptions.Deadline,
// so Checks run it on their own goroutine; decide says what it does.
type deadlineFake struct {
	decide  func(ctx context.Context, a *action.Action, opts gateway.CheckOptions) gateway.Outcome
	settled chan string
}

func (d *deadlineFake) Decide(ctx context.Context, a *action.Action, _ time.Time, opts gateway.CheckOptions) gateway.Outcome {
	return d.decide(ctx, a, opts)
}

func (d *deadlineFake) HonoursDeadline() bool { return true }

func (d *deadlineFake) ReconcileUsage(_ context.Context, id string, agent *action.AgentID, prompt, completion int64) (gateway.Usage, error) {
	d.settled <- fmt.Sprintf("%s %s %d+%d", id, agent, prompt, completion)
	return gateway.Usage{}, nil
}

// TestInlineDecisionGetsTheDeadline: a decider that honours deadlines is
// told the Check's: Options.Timeout from the Check's start, or the
// caller's deadline when that comes sooner.
func TestInlineDecisionGetsTheDeadline(t *testing.T) {
	got := make(chan time.Time, 1)
	d := &deadlineFake{decide: func(_ context.Context, a *action.Action, opts gateway.CheckOptions) gateway.Outcome {
		got <- opts.Deadline
		return gateway.Outcome{Decision: action.Allow, DecisionID: "d"}
	}}
	s := New(d, Options{Timeout: time.Minute})
	before := time.Now()
	resp, _ := s.Check(context.Background(), request("GET", "https://example.com/", nil, ""))
	if h := okHeaders(t, resp); h[HeaderDecisionID] != "d" {
		t.Fatalf("headers %v", h)
	}
	if dl := <-got; dl.Before(before.Add(time.Minute)) || dl.After(time.Now().Add(time.Minute)) {
		t.Fatalf("deadline %v: want a minute after the Check started (%v)", dl, before)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	callerDeadline, _ := ctx.Deadline()
	resp, _ = s.Check(ctx, request("GET", "https://example.com/", nil, ""))
	okHeaders(t, resp)
	if dl := <-got; !dl.Equal(callerDeadline) {
		t.Fatalf("deadline %v: want the caller's, %v", dl, callerDeadline)
	}
}

// TestInlineLateDecisionFailsClosed: an inline decision that ends past the
// deadline is answered 503, as one that did not come back in time, and the
// budget reservation of the LLM call it allowed is released at zero.
func TestInlineLateDecisionFailsClosed(t *testing.T) {
	d := &deadlineFake{settled: make(chan string, 1)}
	d.decide = func(_ context.Context, a *action.Action, opts gateway.CheckOptions) gateway.Outcome {
		if a.Kind == action.KindLLMCall { // the request's last action
			time.Sleep(time.Until(opts.Deadline) + 10*time.Millisecond) // a store wait cut at the deadline
		}
		return gateway.Outcome{Decision: action.Allow, DecisionID: "late-" + a.Kind.String()}
	}
	c := serve(t, New(d, Options{Timeout: 20 * time.Millisecond}))
	body := `{"model":"gpt-4o","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}`
	req := request("POST", "https://api.openai.com/v1/chat/completions", map[string]string{"x-aa-agent-id": "acme/research/researcher-1"}, body)
	v := denied(t, check(t, c, req))
	if v.status != 503 || v.body.Rule != "timeout" || !strings.Contains(v.body.Reason, "failing closed") {
		t.Fatalf("denial %+v", v)
	}
	select {
	case got := <-d.settled:
		if got != "late-llm_call acme/research/researcher-1 0+0" {
			t.Fatalf("settled %q, want the LLM call's reservation released at zero", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the late LLM call's reservation was never released")
	}
}

// TestInlinePanicFailsClosed: a panic in an inline decider is a 503.
func TestInlinePanicFailsClosed(t *testing.T) {
	d := &deadlineFake{decide: func(context.Context, *action.Action, gateway.CheckOptions) gateway.Outcome { panic("boom") }}
	c := serve(t, New(d, Options{}))
	if v := denied(t, check(t, c, request("GET", "https://example.com/", nil, ""))); v.status != 503 || v.body.Rule != "extauthz" {
		t.Fatalf("denial %+v", v)
	}
}

// stalledAudit is an audit log whose writes never confirm: each waits until
// its context ends.
type stalledAudit struct{ storage.AuditLog }

func (stalledAudit) AppendAudit(ctx context.Context, _ []*storage.AuditRecord) error {
	<-ctx.Done()
	return ctx.Err()
}

// stalledRegistry is an agent registry whose reads never return: each waits
// until its context ends.
type stalledRegistry struct{}

func (stalledRegistry) GetAgent(ctx context.Context, _ action.AgentID) (*storage.Agent, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (stalledRegistry) SetAgentStatus(ctx context.Context, _ action.AgentID, _ storage.AgentStatus, _ string) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestInlineCoreStoreStallFailsClosed: with the real decision core deciding
// on the Check's goroutine, a store that stops answering (the audit log, or
// the agent registry) does not hold a Check past its timeout: the core ends
// its wait at the Check's deadline, although the stores' own timeouts are a
// minute, and the Check answers 503. The decision's audit record is still
// written when the audit log works.
func TestInlineCoreStoreStallFailsClosed(t *testing.T) {
	snap := exampleSnapshot(t)
	for _, name := range []string{"audit log", "registry"} {
		t.Run(name, func(t *testing.T) {
			mem := memory.New(memory.Options{})
			var log storage.AuditLog = mem
			o := gateway.Options{Chain: "stall", AuditTimeout: time.Minute, LimitTimeout: time.Minute}
			if name == "audit log" {
				log = stalledAudit{mem}
			} else {
				o.Agents = stalledRegistry{}
			}
			w := groupcommit.New(log, groupcommit.Options{Chain: "stall", WriteTimeout: time.Minute})
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				w.Close(ctx)
			})
			o.Audit = w
			core, err := gateway.NewCore(o)
			if err != nil {
				t.Fatal(err)
			}
			core.SetSnapshot(snap)
			s := New(core, Options{Timeout: 50 * time.Millisecond})
			if !s.inline {
				t.Fatal("the core over a group-commit writer is not run inline")
			}
			c := serve(t, s)
			type answer struct {
				resp *authv3.CheckResponse
				err  error
			}
			answered := make(chan answer, 1)
			go func() {
				resp, err := c.Check(context.Background(), request("GET", "https://en.wikipedia.org/wiki/Go",
					map[string]string{"x-aa-agent-id": "acme/research/researcher-1"}, ""))
				answered <- answer{resp, err}
			}()
			select {
			case a := <-answered:
				if a.err != nil {
					t.Fatal(a.err)
				}
				if v := denied(t, a.resp); v.status != 503 || v.body.Rule != "timeout" {
					t.Fatalf("denial %+v", v)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the Check waited for a stalled store past its timeout (the store's own is a minute)")
			}
			if name != "registry" {
				return
			}
			for start := time.Now(); ; time.Sleep(time.Millisecond) {
				page, err := mem.QueryAudit(context.Background(), storage.AuditQuery{})
				if err == nil && len(page.Records) > 0 {
					if r := page.Records[0]; r.RuleID != "registry" || r.Decision != action.Deny {
						t.Fatalf("audit record %+v, want the registry's fail-closed denial", r)
					}
					return
				}
				if time.Since(start) > 10*time.Second {
					t.Fatalf("the decision cut short at its deadline left no audit record (%v)", err)
				}
			}
		})
	}
}
