package sqlite

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/internal/cputime"
)

// BenchmarkFsyncSmallAppend measures the disk's floor for `sync` durability:
// write 256 bytes (unless the name gives a size) after the previous ones and fdatasync them, either
// appending (the file grows, so the filesystem commits metadata too) or in
// place in a zero-filled file, as the audit journal writes. The gateway's
// sync mode cannot answer faster than one of these per group commit.
//
// back to back, each write follows the previous fdatasync at once (the
// disk is kept busy, as under closed-loop load); paced-1ms starts one
// in-place write per millisecond, as a gateway answering 1,000 checks/s
// one at a time does, so the disk and the process are idle in between.
// in-place-8KiB and in-place-32KiB write a batch's worth at a time (audit
// records are about 400 bytes, so 20 and 80 records): how the flush grows
// with what it carries. cpu-µs/op is the process's CPU time per write and
// fdatasync (on a virtual machine, mostly the guest's I/O notifications).
//
//	go test ./storage/sqlite -run '^$' -bench FsyncSmallAppend -benchtime 2000x
func BenchmarkFsyncSmallAppend(b *testing.B) {
	for _, tc := range []struct {
		name           string
		inPlace, paced bool
		size           int
	}{
		{"append", false, false, 256}, {"in-place", true, false, 256}, {"in-place-paced-1ms", true, true, 256},
		{"in-place-8KiB", true, false, 8 << 10}, {"in-place-32KiB", true, false, 32 << 10},
	} {
		inPlace := tc.inPlace
		b.Run(tc.name, func(b *testing.B) {
			f, err := os.OpenFile(filepath.Join(b.TempDir(), "wal"), os.O_CREATE|os.O_RDWR, 0o600)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			if inPlace {
				if _, err := f.WriteAt(make([]byte, tc.size*(b.N+1)), 0); err != nil {
					b.Fatal(err)
				}
				if err := fdatasync(f); err != nil {
					b.Fatal(err)
				}
			}
			buf := make([]byte, tc.size)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			cpu0 := cputime.Process()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if tc.paced {
					time.Sleep(time.Until(start.Add(time.Duration(i) * time.Millisecond)))
				}
				t0 := time.Now()
				if _, err := f.WriteAt(buf, int64(i*len(buf))); err != nil {
					b.Fatal(err)
				}
				if err := fdatasync(f); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			b.ReportMetric(float64((cputime.Process()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
