package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Program says which kernel program produced an event.
type Program uint8

// Programs (c/governor.c enum program).
const (
	ProgConnect4 Program = 1
	ProgConnect6 Program = 2
	ProgSendmsg4 Program = 3
	ProgSendmsg6 Program = 4
	ProgExec     Program = 5
)

func (p Program) String() string {
	switch p {
	case ProgConnect4:
		return "connect4"
	case ProgConnect6:
		return "connect6"
	case ProgSendmsg4:
		return "sendmsg4"
	case ProgSendmsg6:
		return "sendmsg6"
	case ProgExec:
		return "exec"
	}
	return fmt.Sprintf("Program(%d)", uint8(p))
}

// Verdict is what the kernel did.
type Verdict uint8

// Verdicts (c/governor.c enum verdict).
const (
	VerdictAllow    Verdict = 1
	VerdictDeny     Verdict = 2
	VerdictRedirect Verdict = 3
	// VerdictKill: a denied exec was killed before it ran user code.
	VerdictKill Verdict = 4
	// VerdictObserveDeny: policy denies it, but the agent is in observe
	// mode or the kernel cannot enforce, so it went ahead.
	VerdictObserveDeny Verdict = 5
)

func (v Verdict) String() string {
	switch v {
	case VerdictAllow:
		return "allow"
	case VerdictDeny:
		return "deny"
	case VerdictRedirect:
		return "redirect"
	case VerdictKill:
		return "kill"
	case VerdictObserveDeny:
		return "observe-deny"
	}
	return fmt.Sprintf("Verdict(%d)", uint8(v))
}

// Enforced reports whether the kernel acted against the action.
func (v Verdict) Enforced() bool { return v == VerdictDeny || v == VerdictKill || v == VerdictRedirect }

// Reason says why (c/governor.c enum reason).
type Reason uint8

// Reasons.
const (
	ReasonRule           Reason = 1
	ReasonAlways         Reason = 2
	ReasonNoRule         Reason = 3
	ReasonPort           Reason = 4
	ReasonUnconfigured   Reason = 5
	ReasonExecDeny       Reason = 6
	ReasonExecNotAllowed Reason = 7
	ReasonUDPRedirect    Reason = 8
)

func (r Reason) String() string {
	switch r {
	case ReasonRule:
		return "allowlist entry"
	case ReasonAlways:
		return "always allowed"
	case ReasonNoRule:
		return "no allowlist entry covers the address"
	case ReasonPort:
		return "the port is not allowed for the address"
	case ReasonUnconfigured:
		return "cgroup has programs attached but no agent entry (fail closed)"
	case ReasonExecDeny:
		return "executable is on the deny list"
	case ReasonExecNotAllowed:
		return "executable is not on the allowlist"
	case ReasonUDPRedirect:
		return "redirect mode cannot redirect datagrams"
	case 0:
		return ""
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Event is one kernel verdict.
type Event struct {
	// Time is when the kernel decided (CLOCK_MONOTONIC mapped to wall time).
	Time     time.Time
	CgroupID uint64
	AgentID  uint32
	PID      uint32
	TID      uint32
	PPID     uint32 // exec events only
	UID      uint32
	Program  Program
	Verdict  Verdict
	Reason   Reason
	// RuleID is the ID of the Destination or ExecRule that decided.
	RuleID uint32
	// SockType is unix.SOCK_STREAM or SOCK_DGRAM (network events).
	SockType uint8
	// Destination is the address the agent asked for (IPv4 unmapped for
	// connect4/sendmsg4; v4-mapped stays mapped for connect6/sendmsg6).
	Destination netip.AddrPort
	// RedirectPort is the Envoy listener port of a redirected connection.
	RedirectPort uint16
	// Exec events: the new comm, the executed file, and the arguments
	// (truncated to 256 bytes).
	Comm     string
	Filename string
	Args     []string
}

// Layout of struct event and struct exec_event (checked in tests against
// the generated types).
const (
	evSize       = 72
	execEvSize   = evSize + 16 + 256 + 256
	offComm      = evSize
	offFilename  = evSize + 16
	offArgs      = evSize + 16 + 256
	argsCapacity = 256
)

// ErrShortEvent is returned for a ring buffer record smaller than an event.
var ErrShortEvent = errors.New("short event record")

// decodeEvent fills ev from a raw record; boot maps CLOCK_MONOTONIC to
// wall time.
func decodeEvent(raw []byte, boot time.Time, ev *Event) error {
	if len(raw) < evSize {
		return fmt.Errorf("decode event: %w: %d bytes", ErrShortEvent, len(raw))
	}
	ne := binary.NativeEndian
	*ev = Event{
		Time:         boot.Add(time.Duration(ne.Uint64(raw[0:]))),
		CgroupID:     ne.Uint64(raw[8:]),
		AgentID:      ne.Uint32(raw[16:]),
		PID:          ne.Uint32(raw[20:]),
		TID:          ne.Uint32(raw[24:]),
		UID:          ne.Uint32(raw[28:]),
		RuleID:       ne.Uint32(raw[32:]),
		Program:      Program(raw[36]),
		Verdict:      Verdict(raw[37]),
		Reason:       Reason(raw[38]),
		SockType:     raw[39],
		RedirectPort: ne.Uint16(raw[60:]),
		PPID:         ne.Uint32(raw[64:]),
	}
	family := ne.Uint16(raw[40:])
	port := ne.Uint16(raw[42:])
	if ev.Program != ProgExec {
		var w [4]uint32
		for i := range 4 {
			w[i] = ne.Uint32(raw[44+4*i:])
		}
		ev.Destination = netip.AddrPortFrom(addrFromWords(w, family == unix.AF_INET), port)
		return nil
	}
	if len(raw) < execEvSize {
		return fmt.Errorf("decode exec event: %w: %d bytes", ErrShortEvent, len(raw))
	}
	argsLen := min(int(ne.Uint16(raw[62:])), argsCapacity)
	ev.Comm = cString(raw[offComm : offComm+16])
	ev.Filename = cString(raw[offFilename : offFilename+256])
	if argsLen > 0 {
		args := strings.Split(strings.TrimRight(string(raw[offArgs:offArgs+argsLen]), "\x00"), "\x00")
		ev.Args = args
	}
	return nil
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// PollInterval is how often an EventReader looks for events the kernel
// wrote without waking it (see emit in c/governor.c): the most an event
// waits unless a backlog builds up.
const PollInterval = 50 * time.Millisecond

// EventReader reads verdicts from the ring buffer.
type EventReader struct {
	rd       *ringbuf.Reader
	boot     time.Time
	rec      ringbuf.Record
	deadline time.Time
}

// ErrClosed is returned by Read after Close.
var ErrClosed = os.ErrClosed

// Events opens a reader on the ring buffer. Verdicts queued while no
// reader ran (for example across a runtime restart) are read first.
// One reader at a time.
func (g *Governor) Events() (*EventReader, error) {
	rd, err := ringbuf.NewReader(g.maps.AaEvents)
	if err != nil {
		return nil, fmt.Errorf("open event reader: %w", err)
	}
	return &EventReader{rd: rd, boot: bootTime()}, nil
}

// bootTime is the wall time at which CLOCK_MONOTONIC was zero.
func bootTime() time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Time{}
	}
	return time.Now().Add(-time.Duration(ts.Nano()))
}

// Read blocks until a verdict arrives, the deadline passes
// (os.ErrDeadlineExceeded), or Close is called (ErrClosed).
func (r *EventReader) Read(ev *Event) error {
	for {
		poll := time.Now().Add(PollInterval)
		if !r.deadline.IsZero() && r.deadline.Before(poll) {
			poll = r.deadline
		}
		r.rd.SetDeadline(poll)
		err := r.rd.ReadInto(&r.rec)
		if err == nil {
			return decodeEvent(r.rec.RawSample, r.boot, ev)
		}
		switch {
		case errors.Is(err, ringbuf.ErrClosed):
			return ErrClosed
		case errors.Is(err, os.ErrDeadlineExceeded):
			if !r.deadline.IsZero() && !time.Now().Before(r.deadline) {
				return fmt.Errorf("read event: %w", err)
			}
		default:
			return fmt.Errorf("read event: %w", err)
		}
	}
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t; the zero
// time blocks forever. Not safe to call concurrently with Read.
func (r *EventReader) SetDeadline(t time.Time) { r.deadline = t }

// Close unblocks Read and releases the reader.
func (r *EventReader) Close() error { return r.rd.Close() }

// Pending reports how many bytes of verdicts the kernel has queued that Read
// has not consumed yet; zero means the ring buffer is drained. Safe to call
// while another goroutine reads.
func (r *EventReader) Pending() int { return r.rd.AvailableBytes() }
