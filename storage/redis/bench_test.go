package redis

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkReserve reserves from parallel goroutines on one hot key and on
// one key per goroutine.
func BenchmarkReserve(b *testing.B) {
	for _, hot := range []bool{true, false} {
		name := "spread"
		if hot {
			name = "hot-key"
		}
		b.Run(name, func(b *testing.B) {
			s := openTest(b, "")
			exp := time.Now().Add(time.Hour)
			var g atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				key := "budget:hot"
				if !hot {
					key = "budget:" + strconv.FormatInt(g.Add(1), 10)
				}
				for pb.Next() {
					if _, err := s.Reserve(b.Context(), key, 1, 1<<50, exp); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkTakeToken takes tokens from one hot bucket in parallel.
func BenchmarkTakeToken(b *testing.B) {
	s := openTest(b, "")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := s.TakeToken(b.Context(), "rate:hot", 1e9, 1<<30, time.Now()); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
