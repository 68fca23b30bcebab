package gateway

import (
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestNewIDAt: ids are RFC 9562 version 7 UUIDs in canonical form that
// carry their time to the millisecond, and differ from one another.
func TestNewIDAt(t *testing.T) {
	at := time.Date(2026, 11, 27, 13, 45, 6, 789_000_000, time.UTC)
	seen := map[string]bool{}
	for range 10000 {
		s := newIDAt(at)
		u, err := uuid.Parse(s)
		if err != nil {
			t.Fatalf("%q is not a UUID: %v", s, err)
		}
		if u.String() != s {
			t.Fatalf("%q is not in canonical form (%s)", s, u)
		}
		if u.Version() != 7 || u.Variant() != uuid.RFC4122 {
			t.Fatalf("%s: version %d variant %s, want 7 and RFC 4122", s, u.Version(), u.Variant())
		}
		if sec, nsec := u.Time().UnixTime(); time.Unix(sec, nsec).UnixMilli() != at.UnixMilli() {
			t.Fatalf("%s carries %v, want %v", s, time.Unix(sec, nsec).UTC(), at)
		}
		if seen[s] {
			t.Fatalf("%s made twice in the same millisecond", s)
		}
		seen[s] = true
	}
	// A later millisecond sorts after.
	if a, b := newIDAt(at), newIDAt(at.Add(time.Millisecond)); a >= b {
		t.Fatalf("%s made a millisecond before %s does not sort before it", a, b)
	}
}

// BenchmarkNewID measures making a decision id from many goroutines.
//
//	go test ./gateway -run '^$' -bench NewID -benchmem
func BenchmarkNewID(b *testing.B) {
	at := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = newIDAt(at)
		}
	})
}
