package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

const allowAll = "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: base}\nspec:\n  scope: {level: org, org: acme}\n  default: allow\n"
const denyTools = "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: base}\nspec:\n  scope: {level: org, org: acme}\n  default: allow\n  rules:\n    - id: no-tools\n      match: {action: tool_call}\n      decision: deny\n"

func writePolicy(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func versionOf(t *testing.T, body string) string {
	t.Helper()
	d, err := policy.Parse("x.yaml", []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return policy.Version([]*policy.Document{d})
}

// newStoreReloader returns a reloader over dir and st serving into a fresh core.
func newStoreReloader(t *testing.T, dir string, st PolicyVersions) (*Reloader, *Core) {
	t.Helper()
	c, err := NewCore(Options{Audit: &recorder{}})
	if err != nil {
		t.Fatal(err)
	}
	r := NewReloader(dir, c, nil, 0)
	r.UseStore(st)
	return r, c
}

func TestReloaderFilesBecomeFirstVersion(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, dir, "base.yaml", allowAll)
	st := memory.New(memory.Options{})
	r, c := newStoreReloader(t, dir, st)
	if err := r.Load(); err != nil {
		t.Fatal(err)
	}
	pv, err := st.ActivePolicyVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if pv.Version != versionOf(t, allowAll) || pv.Author != "file:"+dir || len(pv.Documents) != 1 || pv.Documents[0].Name != "base.yaml" || string(pv.Documents[0].Source) != allowAll {
		t.Fatalf("stored version: %+v", pv)
	}
	if c.Snapshot().Version() != pv.Version {
		t.Fatalf("serving %s, stored %s", c.Snapshot().Version(), pv.Version)
	}
}

func TestReloaderFilesOnlyWinWhenTheyChange(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writePolicy(t, dir, "base.yaml", allowAll)
	st := memory.New(memory.Options{})
	r, _ := newStoreReloader(t, dir, st)
	if err := r.Load(); err != nil {
		t.Fatal(err)
	}
	// An operator applies through the API.
	applied, err := r.Activate(ctx, []storage.PolicyDocument{{Name: "base.yaml", Source: []byte(denyTools)}}, "alice", "no tools")
	if err != nil {
		t.Fatal(err)
	}
	// Unchanged files at the next poll do not undo it.
	if err := r.Load(); err != nil || r.Current() != applied.Version {
		t.Fatalf("after a poll of unchanged files: serving %s (err %v), want %s", r.Current(), err, applied.Version)
	}
	// A restarted replica with the same (older) files serves the store's version.
	r2, c2 := newStoreReloader(t, dir, st)
	if err := r2.Load(); err != nil {
		t.Fatal(err)
	}
	if c2.Snapshot().Version() != applied.Version {
		t.Fatalf("restarted replica serves %s, want the applied %s", c2.Snapshot().Version(), applied.Version)
	}
	// Editing the files makes them win again, even back to an older content.
	writePolicy(t, dir, "extra.yaml", strings.Replace(allowAll, "name: base", "name: extra", 1))
	if err := r2.Load(); err != nil {
		t.Fatal(err)
	}
	active, _ := st.ActivePolicyVersion(ctx)
	if active.Version == applied.Version || active.Author != "file:"+dir || active.Message != "policy files changed" || r2.Current() != active.Version {
		t.Fatalf("edited files not activated: active %+v, serving %s", active, r2.Current())
	}
	// A change of the files while serving is a governance record; the
	// activation at start is not.
	if rec := c2.audit.(*recorder).last(t); rec.Event != storage.EventGovernance || rec.RuleID != "policy.files" || !strings.Contains(rec.Reason, active.Version) {
		t.Fatalf("file change audit: %+v", rec)
	}
	if n := len(c2.audit.(*recorder).recs); n != 1 {
		t.Fatalf("%d audit records, want only the file change", n)
	}
	if err := os.Remove(filepath.Join(dir, "extra.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := r2.Load(); err != nil {
		t.Fatal(err)
	}
	if active, _ := st.ActivePolicyVersion(ctx); active.Version != versionOf(t, allowAll) {
		t.Fatalf("files reverted to the first content: active %s, want %s", active.Version, versionOf(t, allowAll))
	}
	// The other replica follows through Sync.
	if err := r.Sync(ctx); err != nil || r.Current() != versionOf(t, allowAll) {
		t.Fatalf("sync: serving %s, err %v", r.Current(), err)
	}
}

func TestReloaderActivateRejectsInvalid(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writePolicy(t, dir, "base.yaml", allowAll)
	st := memory.New(memory.Options{})
	r, c := newStoreReloader(t, dir, st)
	if err := r.Load(); err != nil {
		t.Fatal(err)
	}
	_, err := r.Activate(ctx, []storage.PolicyDocument{{Name: "bad.yaml", Source: []byte(strings.Replace(denyTools, "decision: deny", "decision: maybe", 1))}}, "alice", "")
	var list policy.Errors
	if !errors.As(err, &list) || !strings.Contains(err.Error(), "bad.yaml:10:") {
		t.Fatalf("invalid policy: %v", err)
	}
	if h, _ := st.PolicyHistory(ctx, 0); len(h) != 1 {
		t.Fatalf("an invalid policy was stored: %d versions", len(h))
	}
	if c.Snapshot().Version() != versionOf(t, allowAll) {
		t.Fatal("an invalid policy replaced the serving one")
	}
	if _, err := r.Rollback(ctx, "0123456789ab"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("rollback to an unknown version: %v", err)
	}
}

func TestReloaderKeepsServingWhenStoredVersionIsInvalid(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writePolicy(t, dir, "base.yaml", allowAll)
	st := memory.New(memory.Options{})
	r, c := newStoreReloader(t, dir, st)
	if err := r.Load(); err != nil {
		t.Fatal(err)
	}
	// A version this replica cannot compile (e.g. written by a newer
	// gateway) becomes active in the store.
	bad := &storage.PolicyVersion{Version: "ffffffffffff", Author: "newer-gateway",
		Documents: []storage.PolicyDocument{{Name: "new.yaml", Source: []byte(allowAll + "  future_section: {}\n")}}}
	if err := st.SavePolicyVersion(ctx, bad); err != nil {
		t.Fatal(err)
	}
	if err := st.ActivatePolicyVersion(ctx, bad.Version, c.now()); err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(ctx); err == nil || !strings.Contains(err.Error(), "ffffffffffff is invalid on this replica") {
		t.Fatalf("sync of an invalid stored version: %v", err)
	}
	if c.Snapshot().Version() != versionOf(t, allowAll) || r.LastError() == nil {
		t.Fatalf("serving %s after an invalid stored version (last error %v)", c.Snapshot().Version(), r.LastError())
	}
	// Checks are still decided by the good version.
	out := c.Decide(ctx, &action.Action{Kind: action.KindToolCall, Agent: action.AgentID{Org: "acme", Team: "t", Agent: "a"}, Tool: action.ToolCall{Name: "x"}}, c.now(), CheckOptions{})
	if out.Decision != action.Allow || out.Version != versionOf(t, allowAll) {
		t.Fatalf("decision under the kept version: %v", out)
	}
}

// A poll whose files hold the bytes that parsed to the version being kept
// does not parse them again; any change of bytes, even one of the same
// length, is parsed (and applied or rejected), with or without a store.
func TestReloaderParsesOnlyChangedFiles(t *testing.T) {
	invalid := strings.Replace(denyTools, "tool_call", "file_op__", 1) // same length, an unknown action
	if len(invalid) != len(denyTools) {
		t.Fatal("test bodies must have the same length")
	}
	for _, withStore := range []bool{false, true} {
		t.Run(map[bool]string{false: "files", true: "store"}[withStore], func(t *testing.T) {
			dir := t.TempDir()
			writePolicy(t, dir, "base.yaml", denyTools)
			c, err := NewCore(Options{Audit: &recorder{}})
			if err != nil {
				t.Fatal(err)
			}
			r := NewReloader(dir, c, nil, 0)
			if withStore {
				r.UseStore(memory.New(memory.Options{}))
			}
			for range 3 {
				if err := r.Load(); err != nil {
					t.Fatal(err)
				}
			}
			if r.parses != 1 {
				t.Fatalf("three loads of the same files parsed them %d times, want 1", r.parses)
			}
			// Rewriting the same bytes changes nothing either.
			writePolicy(t, dir, "base.yaml", denyTools)
			if err := r.Load(); err != nil || r.parses != 1 {
				t.Fatalf("rewritten unchanged files: err %v, %d parses", err, r.parses)
			}
			writePolicy(t, dir, "base.yaml", invalid)
			err = r.Load()
			if r.parses != 2 {
				t.Fatalf("changed files parsed %d times in all, want 2", r.parses)
			}
			// The change is the invalid action name: rejected, and the
			// previous version keeps serving.
			if err == nil || c.Snapshot().Version() != versionOf(t, denyTools) {
				t.Fatalf("invalid change: err %v, serving %s", err, c.Snapshot().Version())
			}
			// Rejected files are parsed again at every poll, and so report
			// their error every time.
			if err := r.Load(); err == nil || r.parses != 3 {
				t.Fatalf("second load of rejected files: err %v, %d parses", err, r.parses)
			}
			writePolicy(t, dir, "base.yaml", allowAll)
			if err := r.Load(); err != nil || c.Snapshot().Version() != versionOf(t, allowAll) || r.parses != 4 {
				t.Fatalf("valid change: err %v, serving %s, %d parses", err, c.Snapshot().Version(), r.parses)
			}
		})
	}
}

// BenchmarkReloadUnchanged measures one poll of unchanged policy files with
// 1,000 rules: the work the reloader does every policy-poll interval (2 s
// by default) while nothing changes.
//
//	go test ./gateway -run '^$' -bench ReloadUnchanged -benchmem
func BenchmarkReloadUnchanged(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: big}\nspec:\n  scope: {level: team, org: acme, team: research}\n  default: deny\n  rules:\n")
	for i := range 1000 {
		fmt.Fprintf(&sb, "    - {id: r%04d, priority: %d, match: {action: network_call, name: host-%04d.example.com}, decision: deny}\n", i, i%100, i)
	}
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "big.yaml"), []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	c, err := NewCore(Options{Audit: &recorder{}})
	if err != nil {
		b.Fatal(err)
	}
	r := NewReloader(dir, c, nil, 0)
	if err := r.Load(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Load(); err != nil {
			b.Fatal(err)
		}
	}
}
