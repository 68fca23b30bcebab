package xds

import (
	"slices"
	"testing"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
)

func loadPolicy(t testing.TB, dir string) *policy.Snapshot {
	t.Helper()
	docs, err := policy.LoadPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := policy.Compile(docs, policy.Version(docs))
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func TestDestinations(t *testing.T) {
	snap := loadPolicy(t, "testdata/policies")
	cases := []struct {
		agent action.AgentID
		want  []Destination
	}{
		{action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}, []Destination{
			{"*.wikipedia.org", 443}, {"192.0.2.10", 80}, {"api.openai.com", 443}, {"export.arxiv.org", 443}, {"internal.example", 8080},
		}},
		// The agent document narrows the team's: en.wikipedia.org (any
		// port) meets *.wikipedia.org:443, *.arxiv.org meets export.arxiv.org:443.
		{action.AgentID{Org: "acme", Team: "research", Agent: "researcher-2"}, []Destination{
			{"en.wikipedia.org", 443}, {"export.arxiv.org", 443},
		}},
		// No network section applies: nothing is routable.
		{action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}, nil},
	}
	for _, tc := range cases {
		got := Destinations(snap, tc.agent)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.agent, got, tc.want)
		}
	}
}

func TestMeet(t *testing.T) {
	cases := []struct {
		a, b hostEntry
		want hostEntry
		ok   bool
	}{
		{hostEntry{"*.example.com", nil}, hostEntry{"api.example.com", []uint32{443}}, hostEntry{"api.example.com", []uint32{443}}, true},
		{hostEntry{"*.example.com", []uint32{80}}, hostEntry{"api.example.com", []uint32{443}}, hostEntry{}, false},
		{hostEntry{"*.example.com", nil}, hostEntry{"example.com", nil}, hostEntry{}, false},
		{hostEntry{"*", []uint32{443}}, hostEntry{"*.a.example.com", nil}, hostEntry{"*.a.example.com", []uint32{443}}, true},
		{hostEntry{"*.example.com", nil}, hostEntry{"*.a.example.com", nil}, hostEntry{"*.a.example.com", nil}, true},
		{hostEntry{"a.com", []uint32{1, 2, 3}}, hostEntry{"a.com", []uint32{3, 2}}, hostEntry{"a.com", []uint32{2, 3}}, true},
	}
	for _, tc := range cases {
		got, ok := meet(tc.a, tc.b)
		if ok != tc.ok || (ok && (got.host != tc.want.host || !slices.Equal(got.ports, tc.want.ports))) {
			t.Errorf("meet(%v, %v) = %v %v, want %v %v", tc.a, tc.b, got, ok, tc.want, tc.ok)
		}
	}
}
