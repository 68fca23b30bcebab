package bpf

import (
	"strings"
	"unsafe"
)

// AssumeMissing makes Open treat the named kernel features as missing
// ("send_signal", "cgroup_sock_addr"), to test degradation on a kernel
// that has them.
func AssumeMissing(o *Options, features ...string) {
	o.assumeMissing = map[string]bool{}
	for _, f := range features {
		o.assumeMissing[f] = true
	}
}

// Layout checks for the hand-written event decoder.
var (
	EventSize     = int(unsafe.Sizeof(governorEvent{}))
	ExecEventSize = int(unsafe.Sizeof(governorExecEvent{}))
	OffComm       = int(unsafe.Offsetof(governorExecEvent{}.Comm))
	OffFilename   = int(unsafe.Offsetof(governorExecEvent{}.Filename))
	OffArgs       = int(unsafe.Offsetof(governorExecEvent{}.Args))
	OffPpid       = int(unsafe.Offsetof(governorEvent{}.Ppid))
	OffAddr       = int(unsafe.Offsetof(governorEvent{}.Addr))

	DecoderEventSize   = evSize
	DecoderExecSize    = execEvSize
	DecoderOffComm     = offComm
	DecoderOffFilename = offFilename
	DecoderOffArgs     = offArgs
)

// EncodeTestEvent lays out a network event as the kernel does.
func EncodeTestEvent(ev Event) []byte {
	e := governorEvent{
		CgroupId: ev.CgroupID, AgentId: ev.AgentID, Pid: ev.PID, Tid: ev.TID, Uid: ev.UID, RuleId: ev.RuleID,
		Program: uint8(ev.Program), Verdict: uint8(ev.Verdict), Reason: uint8(ev.Reason), SockType: ev.SockType,
		Family: 10, Port: ev.Destination.Port(), RedirectPort: ev.RedirectPort, Ppid: ev.PPID,
	}
	b := ev.Destination.Addr().As16()
	for i := range 4 {
		e.Addr[i] = nativeFromBE(b[i*4 : i*4+4])
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&e)), unsafe.Sizeof(e))
}

// DecodeTestEvent runs the decoder.
func DecodeTestEvent(raw []byte, ev *Event) error { return decodeEvent(raw, bootTime(), ev) }

// CompileEgressForTest returns the merged LPM entries as strings.
func CompileEgressForTest(d []Destination, max int) ([]string, error) {
	es, err := compileEgress("egress", d, max)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range es {
		out = append(out, Destination{Prefix: e.prefix, Ports: e.ports}.String())
	}
	return out, nil
}

// ValidateExecNameForTest checks one exec rule name.
func ValidateExecNameForTest(name string) error {
	_, err := execKey(1, name)
	return err
}

// ParseMountinfoForTest renders parsed mounts as "point type|...".
func ParseMountinfoForTest(s string) (string, error) {
	ms, err := parseMountinfo(strings.NewReader(s))
	if err != nil {
		return "", err
	}
	var parts []string
	for _, m := range ms {
		parts = append(parts, m.point+" "+m.fstype)
	}
	return strings.Join(parts, "|"), nil
}

// RuleEntries counts the entries of the rule trie (slot 0 included).
func (g *Governor) RuleEntries() int {
	var k governorRuleKey
	var v governorRule
	n := 0
	it := g.maps.AaRules.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}
