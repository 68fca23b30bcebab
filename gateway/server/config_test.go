package server

import (
	"flag"
	"os"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the README's configuration table")

const tableStart, tableEnd = "<!-- config-table:start -->\n", "<!-- config-table:end -->"

// TestREADMEConfigTable keeps the README's configuration table equal to Settings.
func TestREADMEConfigTable(t *testing.T) {
	const path = "../../README.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, tableStart), strings.Index(s, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q ... %q section", tableStart, tableEnd)
	}
	got := s[i+len(tableStart) : j]
	want := MarkdownTable()
	if got == want {
		return
	}
	if *update {
		s = s[:i+len(tableStart)] + want + s[j:]
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README configuration table is stale; run go test ./gateway/server -run TestREADMEConfigTable -update\nwant:\n%s", want)
}

func TestDefaultConfigValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if c.GRPCAddr != "127.0.0.1:50051" || c.APIAddr != "127.0.0.1:7700" || c.Store != "sqlite:./data/aa.db" || c.AuditDurability != "sync" {
		t.Fatalf("unexpected defaults: %+v", c)
	}
}

func TestBindEnvAndFlags(t *testing.T) {
	env := map[string]string{"AA_GRPC_ADDR": "127.0.0.1:6000", "AA_POLICY_POLL": "5s", "AA_AUDIT_DURABILITY": "os"}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c := DefaultConfig()
	if err := Bind(fs, &c, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"-api-addr", "127.0.0.1:7000"}); err != nil {
		t.Fatal(err)
	}
	if c.GRPCAddr != "127.0.0.1:6000" || c.APIAddr != "127.0.0.1:7000" || c.PolicyPoll != 5*time.Second || c.AuditDurability != "os" {
		t.Fatalf("env and flags not applied: %+v", c)
	}
}

// Boolean settings are switches: given alone they turn on, =false turns
// them off, and the flag after a switch is not taken as its value.
func TestBindSwitches(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c := DefaultConfig()
	if err := Bind(fs, &c, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if c.AllowRemote || c.DebugPprof || !c.XDSExtProc {
		t.Fatalf("defaults: allow-remote %v, debug-pprof %v, xds-ext-proc %v", c.AllowRemote, c.DebugPprof, c.XDSExtProc)
	}
	if err := fs.Parse([]string{"--allow-remote", "--xds-advertise-addr", "gw.internal:50051", "--debug-pprof", "--xds-ext-proc=false"}); err != nil {
		t.Fatal(err)
	}
	if !c.AllowRemote || !c.DebugPprof || c.XDSExtProc || c.XDSAdvertiseAddr != "gw.internal:50051" {
		t.Fatalf("switches not applied: allow-remote %v, debug-pprof %v, xds-ext-proc %v, xds-advertise-addr %q",
			c.AllowRemote, c.DebugPprof, c.XDSExtProc, c.XDSAdvertiseAddr)
	}
	if err := fs.Parse([]string{"--debug-pprof=maybe"}); err == nil || !strings.Contains(err.Error(), "debug-pprof") {
		t.Fatalf("--debug-pprof=maybe: %v, want an error naming the flag", err)
	}
}

func TestBindBadEnv(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c := DefaultConfig()
	err := Bind(fs, &c, func(k string) string {
		if k == "AA_POLICY_POLL" {
			return "soon"
		}
		return ""
	})
	if err == nil || !strings.Contains(err.Error(), "AA_POLICY_POLL") {
		t.Fatalf("want an error naming AA_POLICY_POLL, got %v", err)
	}
}

func TestValidateRejects(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"remote grpc", func(c *Config) { c.GRPCAddr = "0.0.0.0:50051" }, "--grpc-addr: \"0.0.0.0:50051\" is not a loopback address"},
		{"bad api", func(c *Config) { c.APIAddr = "nonsense" }, "--api-addr: \"nonsense\" is not host:port"},
		{"durability", func(c *Config) { c.AuditDurability = "maybe" }, "--audit-durability: must be sync or os, not \"maybe\""},
		{"limit", func(c *Config) { c.MaxRequestBytes = 10 }, "--max-request-bytes: must be between 1024"},
		{"log level", func(c *Config) { c.LogLevel = "loud" }, "--log-level: must be debug, info, warn or error"},
		{"no policy", func(c *Config) { c.PolicyPath = "" }, "--policy: is required"},
		{"no store", func(c *Config) { c.Store = "" }, "--store: is required"},
		{"empty unix", func(c *Config) { c.GRPCAddr = "unix:" }, "--grpc-addr: unix socket path is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error containing %q, got %v", tc.want, err)
			}
		})
	}
	c := DefaultConfig()
	c.GRPCAddr, c.AllowRemote = "0.0.0.0:50051", true
	if err := c.Validate(); err != nil {
		t.Fatalf("--allow-remote should permit a wildcard address: %v", err)
	}
}
