package verdicts_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/cgrouptest"
	"github.com/agent-assembly/agent-assembly/gateway/server"
)

// BenchmarkKernelEventsToAudit measures kernel verdicts per second into
// the gateway's audit log: b.N denied connects in a tight loop in the
// governed cgroup, each a verdict in the ring buffer, pumped into the
// runtime's durable buffer, forwarded with ReportEvents and appended to a
// real gateway's SQLite audit log (sync and os durability). The clock
// stops when the runtime's buffer is empty, that is when the gateway has
// acknowledged every event as durable. It reports events/s, ring buffer
// drops and events the runtime could not buffer; afterwards it checks that
// the log holds every verdict that was not dropped.
//
//	sudo go test -run '^$' -bench KernelEventsToAudit -benchtime 20000x ./runtime/verdicts/
func BenchmarkKernelEventsToAudit(b *testing.B) {
	for _, durability := range []string{"sync", "os"} {
		b.Run("sqlite-"+durability, func(b *testing.B) {
			r := newRig(b, func(c *server.Config) {
				c.Store = "sqlite:" + filepath.Join(b.TempDir(), "aa.db")
				c.AuditDurability = durability
			})
			cg := cgrouptest.New(b, "")
			if err := r.gov.Govern(cg, bpf.AgentConfig{ID: 1}); err != nil {
				b.Fatalf("govern: %v", err)
			}
			r.startPump()
			before, err := r.gov.Stats()
			if err != nil {
				b.Fatal(err)
			}
			recorded, failed := r.pump.Recorded(), r.pump.Failed()
			b.ResetTimer()
			start := time.Now()
			_, got := act(b, cg, "connects", strconv.Itoa(b.N), "192.0.2.1:80")
			if got != strconv.Itoa(b.N) {
				b.Fatalf("%d connects: %s denied, want all", b.N, got)
			}
			var st bpf.Stats
			for {
				if st, err = r.gov.Stats(); err != nil {
					b.Fatal(err)
				}
				emitted, dropped := st.Events-before.Events, st.Drops-before.Drops
				if emitted+dropped >= uint64(b.N) && r.pump.Recorded()+r.pump.Failed()-recorded-failed >= int64(emitted) {
					break
				}
				time.Sleep(time.Millisecond)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := r.rt.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			drops := st.Drops - before.Drops
			lost := r.pump.Failed() - failed
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
			b.ReportMetric(float64(drops), "drops")
			b.ReportMetric(float64(lost), "lost")
			b.ReportMetric(0, "ns/op")
			n := 0
			for _, rec := range r.records() {
				if rec.GetRuleId() == "kernel/connect4" && strings.Contains(rec.GetPayloadJson(), `"host":"192.0.2.1"`) {
					n++
				}
			}
			if want := b.N - int(drops) - int(lost); n != want {
				b.Fatalf("audit log holds %d of the verdicts, want %d (%d dropped, %d lost)", n, want, drops, lost)
			}
			if testing.Verbose() {
				fmt.Printf("%s: %d verdicts in %s\n", b.Name(), b.N, elapsed)
			}
		})
	}
}
