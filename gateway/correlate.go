package gateway

import (
	"context"
	"fmt"
	"net"
	"path"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Correlation window: a kernel verdict is linked to a decision another
// layer (SDK, runtime, Envoy) made about the same action for the same agent
// up to correlateBefore earlier, or correlateAfter later (clock skew
// between the runtime's host and the gateway).
const (
	correlateBefore = 10 * time.Second
	correlateAfter  = 2 * time.Second
	// correlateScan bounds the decisions read per agent and kind per batch.
	correlateScan = 500
)

// correlate links each kernel-layer record in recs (whose actions are
// acts) to the most recent decision of another layer about the same
// action: the record's reason names that decision, and it takes the
// decision's trace and session ids when it has none, so a trace lists every
// layer that saw the action. Same action means the same agent and kind and,
// for a process exec, the same executable base name; for a network call,
// the same port and either the same host or, since the kernel sees
// addresses, one of the host names the reporter's resolver mapped the
// address from (hosts[i], ReportedEvent.resolved_hosts). Failures to read
// the log are logged and leave the records as they are.
func (r *reports) correlate(ctx context.Context, recs []*storage.AuditRecord, acts []action.Action, layers []string, hosts [][]string) {
	q, ok := r.store.(AuditQuerier)
	if !ok {
		return
	}
	type group struct {
		agent    action.AgentID
		kind     action.Kind
		from, to time.Time
		idx      []int
	}
	var groups []*group
	for i, rec := range recs {
		if layers[i] != "kernel" || (rec.Kind != action.KindProcessExec && rec.Kind != action.KindNetworkCall) {
			continue
		}
		var g *group
		for _, x := range groups {
			if x.agent == rec.Agent && x.kind == rec.Kind {
				g = x
			}
		}
		if g == nil {
			g = &group{agent: rec.Agent, kind: rec.Kind, from: rec.Time, to: rec.Time}
			groups = append(groups, g)
		}
		g.from, g.to = minTime(g.from, rec.Time), maxTime(g.to, rec.Time)
		g.idx = append(g.idx, i)
	}
	for _, g := range groups {
		page, err := q.QueryAudit(ctx, storage.AuditQuery{
			Org: g.agent.Org, Team: g.agent.Team, Agent: g.agent.Agent, Kind: g.kind, Event: storage.EventDecision,
			Since: g.from.Add(-correlateBefore), Until: g.to.Add(correlateAfter), Limit: correlateScan,
		})
		if err != nil {
			r.core.log.WarnContext(ctx, "correlate kernel events with other layers' decisions", "agent", g.agent.String(), "err", err)
			continue
		}
		for _, i := range g.idx {
			rec := recs[i]
			for _, d := range page.Records { // newest first
				if strings.HasSuffix(d.Chain, "/reports") || d.Time.After(rec.Time.Add(correlateAfter)) || d.Time.Before(rec.Time.Add(-correlateBefore)) {
					continue
				}
				da, err := decodePayload(d.Kind, d.Payload)
				if err != nil {
					continue
				}
				via := ""
				if !sameAction(&acts[i], &da) {
					h, ok := sameHost(&acts[i], &da, hosts[i])
					if !ok {
						continue
					}
					via = " for host " + h
				}
				rec.Reason += fmt.Sprintf("; also decided by another layer %s earlier%s: %s by %s (decision %s)",
					rec.Time.Sub(d.Time).Round(time.Millisecond), via, d.Decision, d.RuleID, d.ID)
				if rec.TraceID == "" && d.TraceID != "" {
					rec.TraceID, rec.SpanID = d.TraceID, d.SpanID
				}
				if rec.SessionID == "" {
					rec.SessionID = d.SessionID
				}
				break
			}
		}
	}
}

// sameAction reports whether a kernel-seen action k and a decided action d
// are the same act.
func sameAction(k, d *action.Action) bool {
	if k.Kind != d.Kind {
		return false
	}
	switch k.Kind {
	case action.KindProcessExec:
		return k.Exec.Command != "" && path.Base(k.Exec.Command) == path.Base(d.Exec.Command)
	case action.KindNetworkCall:
		return k.Network.Port == d.Network.Port && k.Network.Host != "" &&
			strings.Trim(strings.ToLower(d.Network.Host), "[]") == strings.Trim(strings.ToLower(k.Network.Host), "[]")
	}
	return false
}

// sameHost reports whether a kernel-seen network call k, whose address the
// reporter resolved from hosts, and a decided network call d are the same
// connection: the same port, and d's host is one of those names. It returns
// the name.
func sameHost(k, d *action.Action, hosts []string) (string, bool) {
	if k.Kind != action.KindNetworkCall || d.Kind != action.KindNetworkCall || k.Network.Port != d.Network.Port {
		return "", false
	}
	dh := d.Network.Host
	if h, _, err := net.SplitHostPort(dh); err == nil {
		dh = h // an authority with its port
	}
	dh = strings.TrimSuffix(strings.ToLower(dh), ".")
	for _, h := range hosts {
		if h = strings.TrimSuffix(strings.ToLower(h), "."); h != "" && h == dh {
			return h, true
		}
	}
	return "", false
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
