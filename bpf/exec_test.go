package bpf_test

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/cgrouptest"
)

// TestExecDenyKills: every exec in the governed cgroup is reported with
// pid, ppid, uid, comm, filename and argv; a denied one is killed before
// it runs (its output never appears) and reported as enforced.
func TestExecDenyKills(t *testing.T) {
	g, _ := openGovernor(t, bpf.Options{})
	requireExec(t, g)
	ev := collect(t, g)
	cg := cgrouptest.New(t, "")
	cgID, _ := bpf.CgroupID(cg)
	err := g.Govern(cg, bpf.AgentConfig{ID: 3, ExecDeny: []bpf.ExecRule{{Name: "echo", ID: 11}, {Name: "/usr/bin/env", ID: 12}}})
	if err != nil {
		t.Fatalf("Govern: %v", err)
	}
	// sh runs (allowed); /bin/echo is denied by base name, env by path.
	out, err := cgrouptest.Command(t, cg, "/bin/sh", "-c", "/bin/echo user-code-ran; echo status=$?; /usr/bin/env true; echo env=$?; /bin/true extra arg; echo true=$?").Output()
	if err != nil {
		t.Fatalf("sh: %v (%s)", err, out)
	}
	got := string(out)
	if strings.Contains(got, "user-code-ran") {
		t.Errorf("denied /bin/echo ran: %q", got)
	}
	for _, want := range []string{"status=137", "env=137", "true=0"} {
		if !strings.Contains(got, want) {
			t.Errorf("output %q lacks %q (137 = killed by SIGKILL)", got, want)
		}
	}
	kill := ev.wait(t, "kill of /bin/echo", func(e bpf.Event) bool {
		return e.Program == bpf.ProgExec && e.CgroupID == cgID && e.Filename == "/bin/echo"
	})
	if kill.Verdict != bpf.VerdictKill || kill.Reason != bpf.ReasonExecDeny || kill.RuleID != 11 || kill.AgentID != 3 {
		t.Errorf("echo event = %+v, want kill by rule 11", kill)
	}
	if !kill.Verdict.Enforced() {
		t.Errorf("kill is not reported as enforced")
	}
	if !slices.Equal(kill.Args, []string{"/bin/echo", "user-code-ran"}) {
		t.Errorf("echo args = %q", kill.Args)
	}
	if kill.PPID == 0 || kill.PID == 0 || kill.Comm != "echo" {
		t.Errorf("echo event pid %d ppid %d comm %q", kill.PID, kill.PPID, kill.Comm)
	}
	env := ev.wait(t, "kill of /usr/bin/env", func(e bpf.Event) bool {
		return e.Program == bpf.ProgExec && e.CgroupID == cgID && e.Filename == "/usr/bin/env"
	})
	if env.Verdict != bpf.VerdictKill || env.RuleID != 12 {
		t.Errorf("env event = %+v, want kill by rule 12", env)
	}
	ok := ev.wait(t, "allowed /bin/true", func(e bpf.Event) bool {
		return e.Program == bpf.ProgExec && e.CgroupID == cgID && e.Filename == "/bin/true"
	})
	if ok.Verdict != bpf.VerdictAllow || !slices.Equal(ok.Args, []string{"/bin/true", "extra", "arg"}) {
		t.Errorf("true event = %+v", ok)
	}
	sh := ev.wait(t, "the sh itself", func(e bpf.Event) bool {
		return e.Program == bpf.ProgExec && e.CgroupID == cgID && e.Filename == "/bin/sh"
	})
	if sh.Verdict != bpf.VerdictAllow || sh.UID != 0 {
		t.Errorf("sh event = %+v", sh)
	}
	// A process outside the cgroup may run echo.
	if out, err := exec.Command("/bin/echo", "outside").Output(); err != nil || strings.TrimSpace(string(out)) != "outside" {
		t.Errorf("echo outside the cgroup: %q, %v", out, err)
	}
}

// TestExecAllowlist: with an allowlist, anything not on it is killed.
func TestExecAllowlist(t *testing.T) {
	g, _ := openGovernor(t, bpf.Options{})
	requireExec(t, g)
	cg := cgrouptest.New(t, "")
	err := g.Govern(cg, bpf.AgentConfig{ID: 4, ExecAllow: []bpf.ExecRule{{Name: "sh"}, {Name: "true"}}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := cgrouptest.Command(t, cg, "/bin/sh", "-c", "/bin/true; echo true=$?; /bin/echo ran; echo echo=$?").Output()
	if err != nil {
		t.Fatalf("sh: %v (%s)", err, out)
	}
	if got := string(out); got != "true=0\necho=137\n" {
		t.Errorf("output = %q, want true allowed and echo killed", got)
	}
	// The agent's own first exec is judged too.
	err = cgrouptest.Command(t, cg, "/bin/echo", "x").Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("direct exec of a command off the allowlist: %v, want killed by SIGKILL", err)
	}
}
