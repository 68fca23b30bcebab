package alerts

import (
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// BenchmarkRaise measures what the decision path pays to hand over an
// alert: a non-blocking send on the bounded queue (the store worker drains
// it concurrently; alerts that do not fit are dropped and counted).
func BenchmarkRaise(b *testing.B) {
	e, err := New(Options{Store: memory.New(memory.Options{})})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(b.Context())
	a := storage.Alert{ID: "bench", Kind: KindPolicyViolation, Severity: storage.SeverityWarning, Summary: "x", Details: []byte(`{}`)}
	b.ReportAllocs()
	for b.Loop() {
		e.Raise(a)
	}
}

// BenchmarkSign measures the webhook signature of a typical 400-byte body.
func BenchmarkSign(b *testing.B) {
	body := make([]byte, 400)
	b.ReportAllocs()
	for b.Loop() {
		_ = Sign(secret, benchNow, body)
	}
}

var benchNow = mustTime("2026-11-26T02:00:00Z")

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}
