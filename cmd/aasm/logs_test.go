package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var reClock = regexp.MustCompile(`^\d\d:\d\d:\d\d`)

// clockless replaces the leading time of each followed line.
func clockless(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = reClock.ReplaceAllString(l, "<CLOCK>")
	}
	return strings.Join(lines, "\n")
}

// TestLogsRecent: --since prints the window's records oldest first, the
// filters apply, -o json gives one object per record, and bad flags say
// what to do.
func TestLogsRecent(t *testing.T) {
	addr := startNamedGateway(t)
	a := func(args ...string) []string { return append([]string{"--addr", addr}, args...) }
	mustBin(t, exitAllow, a("check", "--agent", "acme/research/researcher-1", "--host", "en.wikipedia.org")...)
	mustBin(t, exitDeny, a("check", "--agent", "acme/research/researcher-1", "--host", "evil.example.com")...)
	mustBin(t, exitAllow, a("check", "--agent", "acme/eng/coder-1", "--tool", "git_status")...)
	mustBin(t, exitDeny, a("check", "--agent", "acme/research/researcher-1", "--host", "bad.example.org")...)

	out := mustBin(t, exitAllow, a("logs", "--since", "1h", "--follow=false", "--agent", "acme/research", "--decision", "deny")...)
	golden(t, "logs-recent.golden", clockless(out))

	out = mustBin(t, exitAllow, a("-o", "json", "logs", "--since", "1h", "--follow=false", "--kind", "network_call")...)
	dec := json.NewDecoder(strings.NewReader(out))
	var kinds []string
	for {
		var r struct {
			ActionType string `json:"action_type"`
		}
		if err := dec.Decode(&r); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("logs -o json: %v\n%s", err, out)
		}
		kinds = append(kinds, r.ActionType)
	}
	if strings.Join(kinds, ",") != "NETWORK_CALL,NETWORK_CALL,NETWORK_CALL" {
		t.Fatalf("logs --kind network_call -o json: %v\n%s", kinds, out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"logs", "--follow=false"}, "add --since"},
		{[]string{"logs", "--agent", "a/b/c/d"}, "--agent must be org, org/team or org/team/agent"},
		{[]string{"logs", "--decision", "maybe"}, `--decision "maybe" is not allow, deny, pending or redact`},
	} {
		code, _, errOut := runBin(t, a(tc.args...)...)
		if code != exitError || !strings.Contains(errOut, tc.want) {
			t.Fatalf("aasm %v: exit %d, want 3 and %q\n%s", tc.args, code, tc.want, errOut)
		}
	}
}

// TestLogsFollow: a running aasm logs prints the recent matching record,
// then new matching decisions as they are made and none that do not match,
// and exits 0 on interrupt.
func TestLogsFollow(t *testing.T) {
	addr := startNamedGateway(t)
	mustBin(t, exitDeny, "--addr", addr, "check", "--agent", "acme/research/researcher-1", "--host", "evil.example.com")

	cmd := exec.Command(aasmBinary(t), "--addr", addr, "logs", "--since", "1h", "--agent", "acme/research", "--decision", "deny")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errOut strings.Builder
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func(what string, poke func()) string {
		t.Helper()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(15 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("%s: aasm logs ended\n%s", what, errOut.String())
				}
				return l
			case <-tick.C:
				if poke != nil {
					poke()
				}
			case <-deadline:
				t.Fatalf("%s: no line within 15s\n%s", what, errOut.String())
			}
		}
	}
	first := next("the recent deny", nil)
	if !strings.Contains(first, "acme/research/researcher-1") || !strings.Contains(first, "DENY") {
		t.Fatalf("first line is not the recent deny: %q", first)
	}
	// The tail subscribes asynchronously: make decisions until one shows.
	// Each round makes non-matching decisions first, so if any of them
	// were printed it would come before the matching one.
	poke := func() {
		runBin(t, "--addr", addr, "check", "--agent", "acme/research/researcher-1", "--host", "en.wikipedia.org")
		runBin(t, "--addr", addr, "check", "--agent", "acme/eng/coder-1", "--tool", "git_status")
		runBin(t, "--addr", addr, "check", "--agent", "acme/research/researcher-1", "--host", "followed.example.com")
	}
	poke()
	l := next("a new deny", poke)
	if !strings.Contains(l, "acme/research/researcher-1") || !strings.Contains(l, "DENY") || strings.Contains(l, "ALLOW") {
		t.Fatalf("followed line is not the new deny: %q", l)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		if !strings.Contains(l, "DENY") || !strings.Contains(l, "acme/research/") {
			t.Fatalf("a record outside the filter was printed: %q", l)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("aasm logs on interrupt: %v (want exit 0)\n%s", err, errOut.String())
	}
}
