package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// An export verifies on its own against the key the gateway published, and
// a changed record or a foreign key is named without asking the gateway.
func TestAuditVerifyExportOffline(t *testing.T) {
	addr := servertest.Start(t, "../../examples/policies", func(c *server.Config) {
		c.Store = "sqlite:" + filepath.Join(t.TempDir(), "aa.db")
		c.ReplicaID = "gw-test"
		c.AgentAuth = "off"
		c.AuditCheckpointInterval = 100 * time.Millisecond
	})
	makeDecisions(t, addr, 6)
	var key struct {
		ID     string `json:"checkpoint_key_id"`
		Public string `json:"checkpoint_public_key"`
		Chains []struct {
			Records           string `json:"records"`
			LastCheckpointSeq string `json:"last_checkpoint_seq"`
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, out, errOut := run(t, "--addr", addr, "-o", "json", "audit", "verify")
		if code != 0 || json.Unmarshal([]byte(out), &key) != nil || len(key.Chains) != 1 {
			t.Fatalf("verify: exit %d\n%s\n%s", code, out, errOut)
		}
		if c := key.Chains[0]; c.LastCheckpointSeq != "" && c.LastCheckpointSeq == c.Records {
			break // a checkpoint covers every decision
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint at the head of the chain: %s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	code, export, errOut := run(t, "--addr", addr, "audit", "export")
	if code != 0 {
		t.Fatalf("export: exit %d: %s", code, errOut)
	}
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("audit.jsonl", export)
	pubFile := write("checkpoint.pub", key.Public+"\n")

	// The gateway is not asked: a dead address proves it.
	offline := []string{"--addr", "127.0.0.1:1", "audit", "verify", "--file"}
	code, out, errOut := run(t, append(offline, good, "--public-key", "@"+pubFile)...)
	if code != 0 || !strings.Contains(out, "gw-test") || !strings.Contains(out, key.Chains[0].Records) {
		t.Fatalf("verify --file of an intact export: exit %d\n%s\n%s", code, out, errOut)
	}

	// Without a key the signatures still verify, with a note to pass one.
	code, _, errOut = run(t, append(offline, good)...)
	if code != 0 || !strings.Contains(errOut, "pass --public-key") {
		t.Fatalf("verify --file without a key: exit %d, stderr %q", code, errOut)
	}

	// One changed decision is named by its sequence number.
	lines := strings.Split(strings.TrimSpace(export), "\n")
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[2]), &rec); err != nil {
		t.Fatal(err)
	}
	rec["reason"] = "edited"
	b, _ := json.Marshal(rec)
	tampered := append(append([]string{}, lines...), "")
	tampered[2] = string(b)
	code, out, _ = run(t, append(offline, write("tampered.jsonl", strings.Join(tampered, "\n")), "--public-key", key.Public)...)
	if code != exitDeny || !strings.Contains(out, "hash mismatch") {
		t.Fatalf("verify --file of an edited export: exit %d\n%s", code, out)
	}
	seq := rec["seq"].(string)
	if !strings.Contains(out, " "+seq+" ") {
		t.Fatalf("verify --file does not name record %s:\n%s", seq, out)
	}

	// Another key: the checkpoints are not the gateway's.
	other := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	code, out, _ = run(t, append(offline, good, "--public-key", other)...)
	if code != exitDeny || !strings.Contains(out, key.ID) || !strings.Contains(out, "not this gateway's checkpoint key") {
		t.Fatalf("verify --file with another key: exit %d\n%s", code, out)
	}

	// Bad input is named.
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"garbled line": {append(offline, write("bad.jsonl", lines[0]+"\n{not json\n")), "line 2"},
		"empty":        {append(offline, write("empty.jsonl", "\n")), "no audit records"},
		"bad key":      {append(offline, good, "--public-key", "short"), "--public-key"},
		"key online":   {[]string{"--addr", addr, "audit", "verify", "--public-key", key.Public}, "applies to --file"},
	} {
		if code, _, errOut := run(t, c.args...); code != exitError || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, stderr %q, want %q", name, code, errOut, c.want)
		}
	}
}

// An earlier verify -o json, kept elsewhere, anchors the chains: intact
// growth passes, a head that no longer matches, a chain that ends too soon
// or is gone fails, online and on an export.
func TestAuditVerifyAnchors(t *testing.T) {
	addr := startGatewayOn(t, "sqlite:"+filepath.Join(t.TempDir(), "aa.db"))
	makeDecisions(t, addr, 4)
	code, heads, errOut := run(t, "--addr", addr, "-o", "json", "audit", "verify")
	if code != 0 {
		t.Fatalf("verify: exit %d: %s", code, errOut)
	}
	var prev struct {
		Chains []map[string]any `json:"chains"`
	}
	if err := json.Unmarshal([]byte(heads), &prev); err != nil || len(prev.Chains) != 1 || prev.Chains[0]["head_seq"] == nil {
		t.Fatalf("verify -o json has no head_seq: %v\n%s", err, heads)
	}
	dir := t.TempDir()
	write := func(name string, v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := filepath.Join(dir, "heads.json")
	if err := os.WriteFile(good, []byte(heads), 0o600); err != nil {
		t.Fatal(err)
	}
	makeDecisions(t, addr, 3) // the chain grows past its anchor
	if code, out, errOut := run(t, "--addr", addr, "audit", "verify", "--anchors", good); code != 0 {
		t.Fatalf("verify --anchors of a grown chain: exit %d\n%s\n%s", code, out, errOut)
	}
	_, export, _ := run(t, "--addr", addr, "audit", "export")
	exportFile := filepath.Join(dir, "audit.jsonl")
	if err := os.WriteFile(exportFile, []byte(export), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := run(t, "--addr", "127.0.0.1:1", "audit", "verify", "--file", exportFile, "--anchors", good); code != 0 {
		t.Fatalf("verify --file --anchors: exit %d\n%s\n%s", code, out, errOut)
	}

	chain := prev.Chains[0]
	seq := chain["head_seq"].(string)
	edit := func(name string, f func(c map[string]any)) string {
		c := map[string]any{}
		for k, v := range chain {
			c[k] = v
		}
		f(c)
		return write(name, map[string]any{"ok": true, "chains": []any{c}})
	}
	cases := map[string]struct {
		file string
		want string
	}{
		"other hash":     {edit("hash.json", func(c map[string]any) { c["head_hash"] = strings.Repeat("ab", 32) }), "record " + seq + " has hash"},
		"beyond the end": {edit("beyond.json", func(c map[string]any) { c["head_seq"] = "900" }), "record 900 is anchored"},
		"chain gone":     {edit("gone.json", func(c map[string]any) { c["chain"] = "gw-deleted" }), "has no records"},
	}
	for name, c := range cases {
		code, out, errOut := run(t, "--addr", addr, "audit", "verify", "--anchors", c.file)
		if code != exitDeny || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, want 1 and %q\n%s\n%s", name, code, c.want, out, errOut)
		}
	}
	// On the export: a wrong head is named too.
	if code, out, _ := run(t, "--addr", "127.0.0.1:1", "audit", "verify", "--file", exportFile, "--anchors", cases["other hash"].file); code != exitDeny || !strings.Contains(out, "does not match its anchor") {
		t.Errorf("verify --file with a wrong anchor: exit %d\n%s", code, out)
	}
	for name, c := range map[string]struct{ file, want string }{
		"not json":  {write("bad.json", "nope"), "not the output of aasm audit verify"},
		"bad hash":  {edit("badhash.json", func(c map[string]any) { c["head_hash"] = "zz" }), "not a SHA-256"},
		"no chains": {write("empty.json", map[string]any{"ok": true}), "no intact chain head"},
	} {
		if code, _, errOut := run(t, "--addr", addr, "audit", "verify", "--anchors", c.file); code != exitError || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, stderr %q, want %q", name, code, errOut, c.want)
		}
	}
}
