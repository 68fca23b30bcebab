package postgres

import (
	"bytes"
	"strings"
	"testing"
)

func TestMessageEncoding(t *testing.T) {
	cases := []struct {
		topic   string
		payload []byte
	}{
		{"policy", []byte("v7")},
		{"approvals", nil},
		{"a:b:c", []byte("x:y")},
		{"bin", []byte{0, 1, 0xff}},
		{"nul\x00topic", []byte("p")},
		{"ünï", []byte("cödé")},
	}
	for _, c := range cases {
		enc := encodeMessage(c.topic, c.payload)
		if enc[0] != 'n' {
			t.Fatalf("encodeMessage(%q) = %q: missing kind byte", c.topic, enc)
		}
		if strings.ContainsRune(enc, 0) {
			t.Fatalf("encodeMessage(%q, %q) contains NUL, which NOTIFY refuses", c.topic, c.payload)
		}
		topic, payload, ok := decodeMessage(enc[1:])
		if !ok || topic != c.topic || !bytes.Equal(payload, c.payload) {
			t.Fatalf("round trip of (%q, %q) = (%q, %q, %v)", c.topic, c.payload, topic, payload, ok)
		}
	}
	for _, bad := range []string{"", "r", "rx:abc", "r9:ab", "bnot base64", "b!!:!!", "z"} {
		if _, _, ok := decodeMessage(bad); ok {
			t.Errorf("decodeMessage(%q) accepted garbage", bad)
		}
	}
}

func TestAuditNotice(t *testing.T) {
	chain, from, to, ok := parseAuditNotice(auditNotice("gw:1", 5, 9)[1:])
	if !ok || chain != "gw:1" || from != 5 || to != 9 {
		t.Fatalf("parseAuditNotice = %q %d %d %v", chain, from, to, ok)
	}
	for _, bad := range []string{"", "5", "5:x:c", "x:5:c"} {
		if _, _, _, ok := parseAuditNotice(bad); ok {
			t.Errorf("parseAuditNotice(%q) accepted garbage", bad)
		}
	}
}

func TestChannelName(t *testing.T) {
	if got := channelName(""); got != "agent_assembly" {
		t.Errorf("channelName(\"\") = %q", got)
	}
	long := strings.Repeat("s", 100)
	a, b := channelName(long), channelName(long+"x")
	if len(a) > 63 || a == b {
		t.Errorf("long schema names give %q and %q: want distinct names of at most 63 bytes", a, b)
	}
}

func TestMigrationFiles(t *testing.T) {
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range ms {
		if m.version != i+1 {
			t.Fatalf("migration %s has version %d, want %d: versions are consecutive from 1", m.name, m.version, i+1)
		}
	}
	if SchemaVersion() != len(ms) {
		t.Fatalf("SchemaVersion() = %d, want %d", SchemaVersion(), len(ms))
	}
}
