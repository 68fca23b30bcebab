package runtime_test

import (
	"bufio"
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/runtime"
	"github.com/agent-assembly/agent-assembly/runtime/frame"
	"github.com/agent-assembly/agent-assembly/sdkclient"
)

// benchSetup starts a gateway (memory store) and a runtime and returns an
// SDK client on the runtime's socket.
func benchSetup(b *testing.B, cacheTTL time.Duration) (*sdkclient.Client, string, string) {
	b.Helper()
	gw := servertest.Start(b, "testdata/policies", servertest.AgentAuthOff)
	dir := b.TempDir()
	sock := filepath.Join(dir, "a1.sock")
	startRuntime(b, runtime.Options{
		Agents:  []runtime.Agent{{ID: agentA, Socket: sock, UID: os.Getuid()}},
		Gateway: gw, BufferPath: filepath.Join(dir, "events.db"), CacheTTL: cacheTTL,
	})
	c, err := sdkclient.Dial(context.Background(), sdkclient.Options{Socket: sock})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c, sock, gw
}

// latencies reports p50 and p99 of samples as metrics.
func latencies(b *testing.B, samples []time.Duration) {
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	at := func(q float64) float64 { return float64(samples[int(q*float64(len(samples)-1))].Microseconds()) }
	b.ReportMetric(at(0.50), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
}

// BenchmarkCheckThroughRuntime: SDK → runtime socket → gateway CheckAction
// (decision, scan, audit append to the memory store) and back, one at a
// time; the cache is off so every check reaches the gateway.
func BenchmarkCheckThroughRuntime(b *testing.B) {
	c, _, _ := benchSetup(b, -1)
	ctx := context.Background()
	req := toolCheck("echo", `{"say":"hi"}`)
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		d, err := c.Check(ctx, req)
		samples = append(samples, time.Since(t0))
		if err != nil || d.Decision != v1.Decision_ALLOW || d.Cached {
			b.Fatalf("check: %v %v", d, err)
		}
	}
	b.StopTimer()
	latencies(b, samples)
}

// BenchmarkCheckDirectGateway is the same check from the SDK straight to the
// gateway over gRPC, the baseline for the runtime's added cost.
func BenchmarkCheckDirectGateway(b *testing.B) {
	gw := servertest.Start(b, "testdata/policies", servertest.AgentAuthOff)
	c, err := sdkclient.Dial(context.Background(), sdkclient.Options{Gateway: gw, Agent: agentA.String()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	req := toolCheck("echo", `{"say":"hi"}`)
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		d, err := c.Check(ctx, req)
		samples = append(samples, time.Since(t0))
		if err != nil || d.Decision != v1.Decision_ALLOW {
			b.Fatalf("check: %v %v", d, err)
		}
	}
	b.StopTimer()
	latencies(b, samples)
}

// BenchmarkCheckCacheHit: SDK → runtime → answered from the decision cache
// (the hit is still queued for the audit log).
func BenchmarkCheckCacheHit(b *testing.B) {
	c, _, _ := benchSetup(b, time.Hour)
	ctx := context.Background()
	req := toolCheck("echo", `{"say":"hi"}`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		d, err := c.Check(ctx, req)
		if err == nil && d.Cached {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the cache never answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		d, err := c.Check(ctx, req)
		samples = append(samples, time.Since(t0))
		if err != nil || !d.Cached {
			b.Fatalf("check: %v %v", d, err)
		}
	}
	b.StopTimer()
	latencies(b, samples)
}

// BenchmarkFramesPerSecond: heartbeat frames pipelined over 4 connections
// (each with a reader and a writer), measuring the runtime's frame handling
// (read, decode, dispatch, encode, write) without the gateway.
func BenchmarkFramesPerSecond(b *testing.B) {
	_, sock, _ := benchSetup(b, -1)
	const conns = 4
	per := b.N/conns + 1
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range conns {
		c, err := net.Dial("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if tag, msg, err := hello(c); err != nil || tag != v1.RuntimeFrameTag_RUNTIME_FRAME_WELCOME {
			b.Fatalf("hello: %v %v %s", tag, err, msg)
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			w := bufio.NewWriterSize(c, 64<<10)
			var buf []byte
			for i := range per {
				buf, _ = frame.Append(buf[:0], v1.RuntimeFrameTag_RUNTIME_FRAME_HEARTBEAT, &v1.RuntimeHeartbeat{RequestId: uint64(i + 1)})
				_, _ = w.Write(buf)
			}
			_ = w.Flush()
		}()
		go func() {
			defer wg.Done()
			r := bufio.NewReaderSize(c, 64<<10)
			for range per {
				tag, body, err := frame.Read(r, frame.DefaultMaxBody)
				if err != nil || tag != v1.RuntimeFrameTag_RUNTIME_FRAME_REPLY {
					b.Errorf("reply: %v %v", tag, err)
					return
				}
				var rep v1.RuntimeReply
				_ = proto.Unmarshal(body, &rep)
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(conns*per)/time.Since(start).Seconds(), "frames/s")
}
