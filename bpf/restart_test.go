package bpf_test

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/cgrouptest"
)

// TestRestartKeepsEnforcement: after the governor's process lets go
// (Close, as when the runtime exits or crashes), the pinned programs keep
// enforcing; verdicts made meanwhile wait in the ring buffer, and a new
// governor on the same pins takes the agents over, reads them, and can
// change the rules without re-attaching.
func TestRestartKeepsEnforcement(t *testing.T) {
	cgrouptest.Root(t)
	pin := filepath.Join(bpf.DefaultBPFFS, "aa-test-"+randHex())
	log, _ := newTestLogger(t)
	g1, err := bpf.Open(bpf.Options{Logger: log, PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	requireNetwork(t, g1)
	target := listen(t, "tcp4", "127.0.0.1:0", "hello")
	cg := cgrouptest.New(t, "")
	cgID, _ := bpf.CgroupID(cg)
	if err := g1.Govern(cg, bpf.AgentConfig{ID: 5, Egress: []bpf.Destination{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}}}); err != nil {
		t.Fatal(err)
	}
	agent := newAgent(t, cg)
	if err := g1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	// No governor process holds anything now.
	if got := agent.do("dial tcp4 " + target.String()); got != "EPERM" {
		t.Fatalf("with no runtime: %q, want EPERM (pinned enforcement)", got)
	}

	g2, tl := openGovernor(t, bpf.Options{PinPath: pin})
	if !strings.Contains(tl.String(), "took over pinned agents") {
		t.Errorf("restart did not report the taken-over agents")
	}
	if ids := g2.Governed(); len(ids) != 1 || ids[0] != cgID {
		t.Errorf("Governed after restart = %v, want [%d]", ids, cgID)
	}
	ev := collect(t, g2)
	e := ev.wait(t, "the deny made while no runtime ran", func(e bpf.Event) bool {
		return e.CgroupID == cgID && e.Verdict == bpf.VerdictDeny && e.Destination.Port() == uint16(target.Port)
	})
	if e.AgentID != 5 {
		t.Errorf("queued event agent = %d, want 5", e.AgentID)
	}
	// Events resume.
	if got := agent.do("dial tcp4 192.0.2.1:80"); got != "EPERM" {
		t.Fatalf("after restart: %q, want EPERM", got)
	}
	ev.wait(t, "a deny after the restart", func(e bpf.Event) bool {
		return e.CgroupID == cgID && e.Destination.String() == "192.0.2.1:80"
	})
	// The new governor controls the rules of the running agent.
	if err := g2.Govern(cg, bpf.AgentConfig{ID: 5, Egress: []bpf.Destination{{Prefix: netip.MustParsePrefix("127.0.0.1/32")}}}); err != nil {
		t.Fatal(err)
	}
	if got := agent.do("dial tcp4 " + target.String()); got != "ok:hello" {
		t.Fatalf("after the new governor allowed it: %q, want ok:hello", got)
	}
	// Release detaches: the agent is free again.
	if err := g2.Release(cg); err != nil {
		t.Fatal(err)
	}
	if got := agent.do("dial tcp4 " + target.String()); got != "ok:hello" {
		t.Fatalf("after Release: %q", got)
	}
}
