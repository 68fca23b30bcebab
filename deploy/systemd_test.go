package deploy

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// unit is a parsed systemd unit file: section -> key -> values in order.
type unit map[string]map[string][]string

// parseUnit reads a unit file (comments, blank lines; no continuation lines,
// which these units do not use and this check rejects).
func parseUnit(b string) (unit, error) {
	u := unit{}
	sec := ""
	sc := bufio.NewScanner(strings.NewReader(b))
	n := 0
	for sc.Scan() {
		n++
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
			continue
		case strings.HasSuffix(l, "\\"):
			return nil, fmt.Errorf("line %d: continuation lines are not supported by this check", n)
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			sec = l[1 : len(l)-1]
			if u[sec] == nil {
				u[sec] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || sec == "" {
				return nil, fmt.Errorf("line %d: %q is not KEY=VALUE inside a section", n, l)
			}
			u[sec][strings.TrimSpace(k)] = append(u[sec][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u, sc.Err()
}

// last returns the effective (last) value of a key.
func (u unit) last(sec, key string) string {
	v := u[sec][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// envFiles reads KEY=VALUE lines of an environment file.
func envFile(b string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(b, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

var unitVarRe = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

// runtimeFlags are the flags of one aa-runtime subcommand.
type runtimeFlags map[string]map[string]bool

// checkUnit checks a unit against the runtime's real flags and environment
// and against the hardening rules the runtime needs.
func checkUnit(u unit, example map[string]string, flags runtimeFlags, knownEnv map[string]bool) errs {
	var e errs
	s := u["Service"]
	if s == nil {
		e.add("no [Service] section")
		return e
	}
	if u.last("Service", "Restart") != "on-failure" {
		e.add("Restart=%s, want on-failure", u.last("Service", "Restart"))
	}
	if u["Install"] == nil || u.last("Install", "WantedBy") == "" {
		e.add("no [Install] WantedBy=: systemctl enable would do nothing")
	}
	start := u.last("Service", "ExecStart")
	words := strings.Fields(start)
	if len(words) < 2 || filepath.Base(words[0]) != "aa-runtime" {
		e.add("ExecStart %q does not run aa-runtime", start)
		return e
	}
	sub := words[1]
	known, ok := flags[sub]
	if !ok {
		e.add("ExecStart runs \"aa-runtime %s\", which is not a subcommand", sub)
		return e
	}
	for _, w := range words[2:] {
		if w == "--" {
			break // the agent's own command line follows
		}
		if !strings.HasPrefix(w, "-") {
			continue
		}
		name := strings.TrimLeft(w, "-")
		name, _, _ = strings.Cut(name, "=")
		if !known[name] {
			e.add("ExecStart: aa-runtime %s has no flag --%s", sub, name)
		}
	}
	// Every $VAR the command line expands is defined by the example
	// environment file or an Environment= line; every AA_* variable set is
	// one aa-runtime reads, or one the command line expands.
	set := map[string]bool{}
	for k := range example {
		set[k] = true
	}
	for _, env := range s["Environment"] {
		k, _, _ := strings.Cut(env, "=")
		set[k] = true
	}
	expanded := map[string]bool{}
	for _, m := range unitVarRe.FindAllStringSubmatch(start, -1) {
		expanded[m[1]] = true
		if !set[m[1]] {
			e.add("ExecStart expands $%s, which neither the example environment file nor Environment= sets", m[1])
		}
	}
	for k := range set {
		if strings.HasPrefix(k, "AA_") && !knownEnv[k] && !expanded[k] {
			e.add("%s is set but aa-runtime never reads it and ExecStart does not use it", k)
		}
	}
	// The buffer and the sockets live in directories systemd creates.
	dirs := map[string]string{"AA_RUNTIME_BUFFER": "/var/lib/" + u.last("Service", "StateDirectory"), "AA_RUNTIME_SOCKET_DIR": "/run/" + u.last("Service", "RuntimeDirectory")}
	for _, env := range s["Environment"] {
		k, v, _ := strings.Cut(env, "=")
		if d, ok := dirs[k]; ok && !strings.HasPrefix(v+"/", d+"/") {
			e.add("%s=%s is outside %s (StateDirectory/RuntimeDirectory), so it is not writable under ProtectSystem", k, v, d)
		}
	}
	// Capabilities: ambient within the bounding set.
	bound := map[string]bool{}
	for _, c := range strings.Fields(u.last("Service", "CapabilityBoundingSet")) {
		bound[c] = true
	}
	for _, c := range strings.Fields(u.last("Service", "AmbientCapabilities")) {
		if !bound[c] {
			e.add("AmbientCapabilities has %s, which CapabilityBoundingSet drops", c)
		}
	}
	if u.last("Service", "NoNewPrivileges") != "yes" {
		e.add("NoNewPrivileges=yes is missing")
	}
	if sub == "exec" {
		if u.last("Service", "Delegate") != "yes" {
			e.add("exec creates the agent's cgroup: Delegate=yes is required")
		}
		for _, k := range []string{"ProtectControlGroups", "ProtectKernelTunables"} {
			if u.last("Service", k) == "yes" {
				e.add("%s=yes makes /sys/fs/cgroup (and bpffs) read-only: the agent cgroup and eBPF would fail", k)
			}
		}
		slice := u.last("Service", "Slice")
		if i := indexOf(words, "--cgroup-root"); i < 0 || i+1 >= len(words) || words[i+1] != "/sys/fs/cgroup/"+slice+"/%n" {
			e.add("--cgroup-root must be /sys/fs/cgroup/<Slice>/%%n (this unit's delegated cgroup), Slice=%q", slice)
		}
		if indexOf(words, "--ebpf") >= 0 {
			for _, c := range []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"} {
				if !bound[c] {
					e.add("--ebpf needs %s in CapabilityBoundingSet", c)
				}
			}
			if len(s["SystemCallFilter"]) > 0 {
				e.add("SystemCallFilter= would have to allow bpf(2); leave it out for the eBPF unit")
			}
		}
	}
	return e
}

func indexOf(s []string, w string) int {
	for i, x := range s {
		if x == w {
			return i
		}
	}
	return -1
}

// units lists the unit files with their example environment files.
var units = []struct{ file, env string }{
	{"aa-runtime.service", "runtime.env.example"},
	{"aa-runtime@.service", "agent.env.example"},
}

// runtimeCLI builds aa-runtime as its image does and reads the flags of its
// subcommands from their -help output.
func runtimeCLI(t *testing.T) runtimeFlags {
	t.Helper()
	bin := binaryFor(t, "aa-runtime")
	f := runtimeFlags{}
	for _, sub := range []string{"serve", "exec"} {
		f[sub], _ = helpFlags(t, bin, sub, "-help")
	}
	return f
}

// TestSystemdUnits checks the aa-runtime units against the real binary's
// flags and environment, and the hardening the runtime needs.
func TestSystemdUnits(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the aa-runtime build these checks read flags from")
	}
	dir := filepath.Join(deployDir(t), "systemd")
	flags := runtimeCLI(t)
	known := sourceEnv(t, "cmd/aa-runtime", "runtime", "sdkclient")
	for _, c := range units {
		t.Run(c.file, func(t *testing.T) {
			u, err := parseUnit(string(read(t, filepath.Join(dir, c.file))))
			if err != nil {
				t.Fatalf("%s: %v", c.file, err)
			}
			checkUnit(u, envFile(string(read(t, filepath.Join(dir, c.env)))), flags, known).report(t, c.file)
		})
	}
}

// TestSystemdUnitCheckCatches shows the unit checks fail on the mistakes
// they exist for.
func TestSystemdUnitCheckCatches(t *testing.T) {
	flags := runtimeFlags{
		"serve": {"gateway": true, "buffer": true, "socket-dir": true, "fail-mode": true, "agent": true},
		"exec":  {"gateway": true, "buffer": true, "socket-dir": true, "fail-mode": true, "agent": true, "cgroup-root": true, "ebpf": true},
	}
	known := map[string]bool{"AA_GATEWAY_ADDR": true, "AA_RUNTIME_BUFFER": true, "AA_RUNTIME_SOCKET_DIR": true, "AA_CREDENTIAL_TOKEN": true}
	dir := filepath.Join(deployDir(t), "systemd")
	base := string(read(t, filepath.Join(dir, "aa-runtime@.service")))
	example := envFile(string(read(t, filepath.Join(dir, "agent.env.example"))))
	for _, c := range []struct{ name, from, to, want string }{
		{"unknown flag", "--fail-mode closed", "--failmode closed", "has no flag --failmode"},
		{"no delegate", "\nDelegate=yes", "\nDelegate=no", "Delegate=yes is required"},
		{"protect cgroups", "ProtectSystem=full", "ProtectSystem=full\nProtectControlGroups=yes", "ProtectControlGroups=yes"},
		{"ambient outside bound", "CapabilityBoundingSet=CAP_BPF ", "CapabilityBoundingSet=", "which CapabilityBoundingSet drops"},
		{"undefined var", "$AGENT_COMMAND", "$AGENT_CMD", "$AGENT_CMD"},
		{"restart", "Restart=on-failure", "Restart=always", "want on-failure"},
		{"syscall filter", "SystemCallArchitectures=native", "SystemCallArchitectures=native\nSystemCallFilter=@system-service", "bpf(2)"},
		{"buffer outside state", "Environment=AA_RUNTIME_BUFFER=/var/lib/agent-assembly/runtime/%i/events.db", "Environment=AA_RUNTIME_BUFFER=/opt/events.db", "outside /var/lib/"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(base, c.from) {
				t.Fatalf("aa-runtime@.service no longer contains %q; update this case", c.from)
			}
			u, err := parseUnit(strings.Replace(base, c.from, c.to, 1))
			if err != nil {
				t.Fatal(err)
			}
			if e := checkUnit(u, example, flags, known); !e.contains(c.want) {
				t.Errorf("found %v, want a problem mentioning %q", e, c.want)
			}
		})
	}
}

// TestSystemdAnalyzeVerify runs systemd's own unit verifier on the units,
// with ExecStart pointed at the built aa-runtime (verify checks that the
// binary exists). Any message is a failure.
func TestSystemdAnalyzeVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the aa-runtime build systemd-analyze verify needs")
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd); the unit checks in TestSystemdUnits still ran")
	}
	bin := binaryFor(t, "aa-runtime")
	dir := t.TempDir()
	var args []string
	for _, c := range units {
		b := strings.ReplaceAll(string(read(t, filepath.Join(deployDir(t), "systemd", c.file))), "/usr/local/bin/aa-runtime", bin)
		name := strings.Replace(c.file, "@.", "@example.", 1)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, p)
	}
	out, err := exec.Command(sa, append([]string{"verify", "--man=no"}, args...)...).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
