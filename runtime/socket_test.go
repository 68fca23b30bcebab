package runtime_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/protobuf/proto"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
	"github.com/agent-assembly/agent-assembly/runtime"
	"github.com/agent-assembly/agent-assembly/runtime/frame"
)

// TestForgedScanClaimIgnored: an SDK that claims its payload is already
// scanned and trusted still has the secret found and redacted by the
// runtime, in the answer and in everything written to disk or the gateway.
func TestForgedScanClaimIgnored(t *testing.T) {
	dir := t.TempDir()
	gw := startGateway(t, dir, "127.0.0.1:0")
	var logs syncbuf.Buffer
	sock := filepath.Join(dir, "a1.sock")
	rt := startRuntime(t, runtime.Options{
		Agents:  []runtime.Agent{{ID: agentA, Socket: sock, UID: os.Getuid()}},
		Gateway: gw.addr, BufferPath: filepath.Join(dir, "rt", "events.db"),
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	_ = rt
	c := dialRaw(t, sock)
	forged := &v1.SdkClaims{Scanned: true, Trust: "trusted", Labels: map[string]string{"scanned_by": "sdk"}}
	args := `{"query":"status","token":"` + fakeGitHub + `"}`
	c.send(v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY, &v1.RuntimeQuery{RequestId: 7, Check: toolCheck("lookup", args), Claims: forged})
	rep := c.reply()
	if rep.GetRequestId() != 7 || rep.GetCheck().GetDecision() != v1.Decision_REDACT {
		t.Fatalf("reply = %v, want REDACT for request 7", rep)
	}
	var found bool
	for _, r := range rep.GetCheck().GetRedactions() {
		found = found || (r.GetPath() == "$.token" && r.GetKind() == "github_token")
	}
	if !found {
		t.Fatalf("no github_token redaction at $.token in %v", rep.GetCheck().GetRedactions())
	}
	// The same forged claim on an event report: the event reaches the
	// gateway redacted.
	c.send(v1.RuntimeFrameTag_RUNTIME_FRAME_EVENTS, &v1.RuntimeEvents{RequestId: 8, Claims: forged, Events: []*v1.RuntimeEvent{
		{Action: toolCheck("lookup", args), Outcome: "ok"},
	}})
	if rep := c.reply(); rep.GetAccepted() != 1 || rep.GetError() != nil {
		t.Fatalf("events reply = %v", rep)
	}
	if !strings.Contains(logs.String(), "ignoring the SDK's claims") {
		t.Errorf("forged claims were not logged:\n%s", logs.String())
	}
	recs := waitForRecords(t, gw, agentA.Agent, func(rs []*v1.AuditRecord) bool {
		for _, r := range rs {
			if strings.Contains(r.GetReason(), "reported by sdk") {
				return true
			}
		}
		return false
	})
	for _, r := range recs {
		if strings.Contains(r.GetPayloadJson(), fakeGitHub) {
			t.Errorf("audit record %s holds the raw secret: %s", r.GetId(), r.GetPayloadJson())
		}
	}
	// Nothing the runtime wrote to disk holds the secret either.
	_ = filepath.WalkDir(filepath.Join(dir, "rt"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), fakeGitHub) {
			t.Errorf("%s holds the raw secret", p)
		}
		return nil
	})
}

// waitForRecords polls the gateway's audit log of one agent until ok.
func waitForRecords(t *testing.T, gw *gatewayProc, agent string, ok func([]*v1.AuditRecord) bool) []*v1.AuditRecord {
	t.Helper()
	cl := v1.NewAuditServiceClient(gw.conn(t))
	var recs []*v1.AuditRecord
	eventually(t, func() bool {
		resp, err := cl.ListAuditRecords(context.Background(), &v1.ListAuditRecordsRequest{
			Filter: &v1.AuditFilter{AgentId: agent}, Ascending: true, Limit: 1000})
		if err != nil {
			return false
		}
		recs = resp.GetRecords()
		return ok(recs)
	})
	return recs
}

// TestBadFramesCloseOnlyThatConnection: an oversized, a garbled and an
// unknown frame each close their own connection with a logged reason;
// another agent's connection and another connection of the same agent keep
// working.
func TestBadFramesCloseOnlyThatConnection(t *testing.T) {
	dir := t.TempDir()
	gw := startGateway(t, dir, "127.0.0.1:0")
	var logs syncbuf.Buffer
	sockA, sockB := filepath.Join(dir, "a1.sock"), filepath.Join(dir, "a2.sock")
	startRuntime(t, runtime.Options{
		Agents: []runtime.Agent{
			{ID: agentA, Socket: sockA, UID: os.Getuid()},
			{ID: agentB, Socket: sockB, UID: os.Getuid()},
		},
		Gateway: gw.addr, BufferPath: filepath.Join(dir, "events.db"), MaxFrame: 4096,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	other := dialRaw(t, sockB)
	sibling := dialRaw(t, sockA)

	cases := []struct {
		name, want string
		raw        []byte
	}{
		{"oversized", "frame too large", header(v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY, 4097)},
		{"garbled", "garbled frame body", append(header(v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY, 6), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)},
		{"unknown tag", "unknown frame tag", header(200, 0)},
		{"second hello", "unexpected RUNTIME_FRAME_HELLO frame", header(v1.RuntimeFrameTag_RUNTIME_FRAME_HELLO, 0)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad := dialRaw(t, sockA)
			if _, err := bad.c.Write(tc.raw); err != nil {
				t.Fatal(err)
			}
			tag, body, err := bad.next()
			if err != nil || tag != v1.RuntimeFrameTag_RUNTIME_FRAME_ERROR {
				t.Fatalf("got %v %v, want an error frame", tag, err)
			}
			var e v1.RuntimeError
			if err := proto.Unmarshal(body, &e); err != nil || !strings.Contains(e.GetMessage(), tc.want) {
				t.Fatalf("error frame %q, want it to contain %q", e.GetMessage(), tc.want)
			}
			if _, _, err := bad.next(); !errors.Is(err, io.EOF) {
				t.Fatalf("after the error frame: %v, want EOF (connection closed)", err)
			}
			if !strings.Contains(logs.String(), "closing agent connection: ") || !strings.Contains(logs.String(), tc.want) {
				t.Fatalf("reason %q not logged:\n%s", tc.want, logs.String())
			}
			for _, c := range []*rawConn{other, sibling} {
				c.send(v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY, &v1.RuntimeQuery{RequestId: 1, Check: toolCheck("echo", `{}`)})
				if rep := c.reply(); rep.GetCheck().GetDecision() != v1.Decision_ALLOW {
					t.Fatalf("a healthy connection was disturbed: %v", rep)
				}
			}
		})
	}
}

func header(tag v1.RuntimeFrameTag, n uint32) []byte {
	h := make([]byte, frame.HeaderSize)
	h[0] = byte(tag)
	binary.BigEndian.PutUint32(h[1:], n)
	return h
}

// TestHandshakeRefusals: wrong protocol version and a claimed identity
// other than the socket's agent are refused with a reason.
func TestHandshakeRefusals(t *testing.T) {
	dir := t.TempDir()
	gw := startGateway(t, dir, "127.0.0.1:0")
	sock := filepath.Join(dir, "a1.sock")
	startRuntime(t, runtime.Options{
		Agents:  []runtime.Agent{{ID: agentA, Socket: sock, UID: os.Getuid()}},
		Gateway: gw.addr, BufferPath: filepath.Join(dir, "events.db"),
	})
	for _, tc := range []struct {
		name  string
		hello *v1.RuntimeHello
		want  string
	}{
		{"version", &v1.RuntimeHello{Versions: []uint32{99}}, "no common protocol version"},
		{"identity", &v1.RuntimeHello{Versions: []uint32{frame.Version}, Agent: &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "a2"}}, "serves agent acme/eng/a1, not acme/eng/a2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &rawConn{t: t}
			var err error
			if c.c, err = (&netDialer{}).dial(sock); err != nil {
				t.Fatal(err)
			}
			defer c.c.Close()
			c.send(v1.RuntimeFrameTag_RUNTIME_FRAME_HELLO, tc.hello)
			tag, body, err := frame.Read(c.c, frame.DefaultMaxBody)
			var e v1.RuntimeError
			if err != nil || tag != v1.RuntimeFrameTag_RUNTIME_FRAME_ERROR || proto.Unmarshal(body, &e) != nil || !strings.Contains(e.GetMessage(), tc.want) {
				t.Fatalf("got %v %v %q, want error %q", tag, err, e.GetMessage(), tc.want)
			}
		})
	}
}

// TestPeerUIDRefused: the socket belongs to the agent's uid with mode 0600;
// a process of another uid cannot connect, and a process that can open it
// anyway (root) is refused by the SO_PEERCRED check.
func TestPeerUIDRefused(t *testing.T) {
	needRoot(t, "run children under other uids and chown the socket")
	const agentUID, otherUID = 4242, 4343
	bin, dir := publicCopy(t)
	gw := startGateway(t, t.TempDir(), "127.0.0.1:0")
	var logs syncbuf.Buffer
	sock := filepath.Join(dir, "a1.sock")
	startRuntime(t, runtime.Options{
		Agents:  []runtime.Agent{{ID: agentA, Socket: sock, UID: agentUID}},
		Gateway: gw.addr, BufferPath: filepath.Join(t.TempDir(), "events.db"),
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != agentUID {
		t.Fatalf("socket mode %v uid %d, want 0600 owned by %d", st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Uid, agentUID)
	}
	run := func(uid uint32) string {
		cmd := childCmd(bin, "dial", "AA_RUNTIME_TEST_SOCKET="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child as uid %d: %v\n%s", uid, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := run(otherUID); !strings.Contains(got, "permission denied") {
		t.Errorf("uid %d: %q, want the connect refused with permission denied", otherUID, got)
	}
	if got := run(agentUID); got != "welcome" {
		t.Errorf("agent uid %d: %q, want welcome", agentUID, got)
	}
	// Root passes the file mode; SO_PEERCRED still refuses it.
	got := run(0)
	if want := "refused: peer uid 0 is not the agent's uid 4242"; got != want {
		t.Errorf("root: %q, want %q", got, want)
	}
	if !strings.Contains(logs.String(), "peer uid 0 is not the agent's uid 4242") {
		t.Errorf("refusal not logged:\n%s", logs.String())
	}
}
