package bpf

import (
	"golang.org/x/sys/unix"

	"github.com/agent-assembly/agent-assembly/action"
)

// Action describes the event as the action the gateway audits: a
// NETWORK_CALL (host = the destination address, port, protocol tcp or udp)
// or a PROCESS_EXEC (command = the executed file, args = argv after
// argv[0]).
func (e *Event) Action(agent action.AgentID) action.Action {
	a := action.Action{Agent: agent, Time: e.Time}
	if e.Program == ProgExec {
		a.Kind = action.KindProcessExec
		a.Exec.Command = e.Filename
		if len(e.Args) > 1 {
			a.Exec.Args = e.Args[1:]
		}
		return a
	}
	a.Kind = action.KindNetworkCall
	a.Network.Host = e.Destination.Addr().Unmap().String()
	a.Network.Port = uint32(e.Destination.Port())
	a.Network.Protocol = "tcp"
	if e.SockType == unix.SOCK_DGRAM {
		a.Network.Protocol = "udp"
	}
	return a
}

// Decision is the kernel's decision in the gateway's terms: allow for
// allow and redirect (Envoy decides a redirected connection), deny for
// deny, kill and observe-deny. Mode tells the last apart.
func (e *Event) Decision() action.Decision {
	switch e.Verdict {
	case VerdictAllow, VerdictRedirect:
		return action.Allow
	}
	return action.Deny
}

// Mode is action.ModeObserve for an observe-deny (the decision was not
// applied), else action.ModeEnforce.
func (e *Event) Mode() action.Mode {
	if e.Verdict == VerdictObserveDeny {
		return action.ModeObserve
	}
	return action.ModeEnforce
}
