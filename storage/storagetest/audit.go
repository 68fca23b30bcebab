package storagetest

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// RunAudit runs the audit log cases. Hooks used: Reopen (tail and append
// from a second instance), TamperAudit.
func RunAudit[L storage.AuditLog](t *testing.T, newLog func(t *testing.T) L, opts ...Option) {
	c := newConfig(opts)
	t.Run("AppendAssignsChain", func(t *testing.T) { testAppendAssigns(t, newLog(t)) })
	t.Run("RoundTrip", func(t *testing.T) { testAuditRoundTrip(t, newLog(t)) })
	t.Run("AllOrNothing", func(t *testing.T) { testAuditAllOrNothing(t, newLog(t)) })
	t.Run("Query", func(t *testing.T) { testAuditQuery(t, newLog(t)) })
	t.Run("ConcurrentAppend", func(t *testing.T) { testAuditConcurrent(t, newLog(t)) })
	t.Run("Verify", func(t *testing.T) { testAuditVerify(t, newLog(t)) })
	t.Run("Checkpoints", func(t *testing.T) { testAuditCheckpoints(t, newLog(t)) })
	t.Run("Anchors", func(t *testing.T) { testAuditAnchors(t, newLog(t)) })
	t.Run("Tamper", func(t *testing.T) {
		if c.tamper == nil {
			t.Skip("driver provides no storagetest.TamperAudit hook")
		}
		testAuditTamper(t, c, newLog(t))
	})
	t.Run("Tail", func(t *testing.T) { testAuditTail(t, newLog(t)) })
	t.Run("SharedBackend", func(t *testing.T) {
		a := newLog(t)
		b := second(t, c, a)
		testAuditShared(t, a, b)
	})
}

// rec returns a record with every caller-set field filled in.
func rec(chain string, i int) *storage.AuditRecord {
	kinds := action.Kinds()
	decisions := []action.Decision{action.Allow, action.Deny, action.Redact, action.Pending}
	events := []storage.RecordEvent{storage.EventDecision, storage.EventDecision, storage.EventRejected, storage.EventGovernance}
	return &storage.AuditRecord{
		Chain:          chain,
		ID:             fmt.Sprintf("dec-%s-%04d", chain, i),
		Time:           base.Add(time.Duration(i/2)*time.Second + time.Duration(i%7)*time.Nanosecond),
		Event:          events[i%len(events)],
		Agent:          action.AgentID{Org: []string{"acme", "globex"}[i%2], Team: []string{"eng", "ops", "sec"}[i%3], Agent: fmt.Sprintf("agent-%d", i%5)},
		SessionID:      fmt.Sprintf("sess-%d", i%4),
		TraceID:        fmt.Sprintf("trace-%d", i%6),
		SpanID:         fmt.Sprintf("span-%d", i),
		Kind:           kinds[i%len(kinds)],
		Payload:        fmt.Appendf(nil, `{"i":%d,"name":"tool-\u00e9"}`, i),
		Decision:       decisions[i%len(decisions)],
		RuleID:         fmt.Sprintf("rule-%d", i%3),
		PolicyVersion:  "v7",
		Mode:           action.ModeEnforce,
		ShadowDecision: decisions[(i+1)%len(decisions)],
		Reason:         fmt.Sprintf("reason %d", i),
		Latency:        time.Duration(i)*time.Microsecond + 17*time.Nanosecond,
	}
}

func testAppendAssigns(t *testing.T, l storage.AuditLog) {
	ctx := testContext(t)
	check(t, "AppendAudit(empty batch)", l.AppendAudit(ctx, nil))
	recs := []*storage.AuditRecord{rec("a", 0), rec("a", 1), rec("b", 2), rec("a", 3)}
	check(t, "AppendAudit", l.AppendAudit(ctx, recs))
	wantSeq := []int64{1, 2, 1, 3}
	prev := map[string][]byte{"a": storage.GenesisHash(), "b": storage.GenesisHash()}
	for i, r := range recs {
		if r.Seq != wantSeq[i] {
			t.Fatalf("record %d: Seq = %d, want %d", i, r.Seq, wantSeq[i])
		}
		if !bytes.Equal(r.PrevHash, prev[r.Chain]) {
			t.Fatalf("record %d: PrevHash = %x, want %x", i, r.PrevHash, prev[r.Chain])
		}
		if !bytes.Equal(r.Hash, storage.HashRecord(r)) || len(r.Hash) != storage.HashSize {
			t.Fatalf("record %d: Hash = %x, want HashRecord = %x", i, r.Hash, storage.HashRecord(r))
		}
		prev[r.Chain] = r.Hash
	}
	more := []*storage.AuditRecord{rec("a", 4)}
	check(t, "AppendAudit(second batch)", l.AppendAudit(ctx, more))
	if more[0].Seq != 4 || !bytes.Equal(more[0].PrevHash, prev["a"]) {
		t.Fatalf("second batch: Seq = %d PrevHash = %x, want 4 and %x", more[0].Seq, more[0].PrevHash, prev["a"])
	}
	chains, err := l.AuditChains(ctx)
	check(t, "AuditChains", err)
	if !slices.Equal(chains, []string{"a", "b"}) {
		t.Fatalf("AuditChains = %q, want [a b] (sorted)", chains)
	}
}

func equalRecord(a, b *storage.AuditRecord) string {
	switch {
	case a.Chain != b.Chain || a.Seq != b.Seq || a.ID != b.ID:
		return fmt.Sprintf("identity %s/%d/%s != %s/%d/%s", a.Chain, a.Seq, a.ID, b.Chain, b.Seq, b.ID)
	case !a.Time.Equal(b.Time):
		return fmt.Sprintf("Time %s != %s (audit times must round-trip to the nanosecond: the hash covers them)", a.Time.Format(time.RFC3339Nano), b.Time.Format(time.RFC3339Nano))
	case a.Event != b.Event || a.Agent != b.Agent || a.Kind != b.Kind:
		return fmt.Sprintf("event/agent/kind %s %s %s != %s %s %s", a.Event, a.Agent, a.Kind, b.Event, b.Agent, b.Kind)
	case a.SessionID != b.SessionID || a.TraceID != b.TraceID || a.SpanID != b.SpanID:
		return "session/trace/span differ"
	case !bytes.Equal(a.Payload, b.Payload):
		return fmt.Sprintf("Payload %q != %q", a.Payload, b.Payload)
	case a.Decision != b.Decision || a.ShadowDecision != b.ShadowDecision || a.Mode != b.Mode:
		return "decision/shadow/mode differ"
	case a.RuleID != b.RuleID || a.PolicyVersion != b.PolicyVersion || a.Reason != b.Reason:
		return "rule/policy version/reason differ"
	case a.Latency != b.Latency:
		return fmt.Sprintf("Latency %v != %v", a.Latency, b.Latency)
	case !bytes.Equal(a.PrevHash, b.PrevHash) || !bytes.Equal(a.Hash, b.Hash):
		return "PrevHash/Hash differ"
	}
	return ""
}

func testAuditRoundTrip(t *testing.T, l storage.AuditLog) {
	ctx := testContext(t)
	full := rec("rt", 5)
	full.Time = time.Date(2026, 11, 25, 9, 30, 0, 123456789, time.FixedZone("CET", 3600))
	sparse := &storage.AuditRecord{Chain: "rt", Time: base.Add(time.Hour)}
	check(t, "AppendAudit", l.AppendAudit(ctx, []*storage.AuditRecord{full, sparse}))
	page, err := l.QueryAudit(ctx, storage.AuditQuery{Ascending: true})
	check(t, "QueryAudit", err)
	if len(page.Records) != 2 {
		t.Fatalf("QueryAudit returned %d records, want 2", len(page.Records))
	}
	for i, want := range []*storage.AuditRecord{full, sparse} {
		if d := equalRecord(page.Records[i], want); d != "" {
			t.Fatalf("record %d did not round-trip: %s", i, d)
		}
	}
	// Returned records belong to the caller.
	page.Records[0].Reason = "changed by caller"
	page.Records[0].Payload = append(page.Records[0].Payload[:0], 'x')
	again, err := l.QueryAudit(ctx, storage.AuditQuery{Ascending: true})
	check(t, "QueryAudit", err)
	if d := equalRecord(again.Records[0], full); d != "" {
		t.Fatalf("changing a returned record changed the store: %s", d)
	}
	// Appended records belong to the caller too.
	full.Reason = "changed after append"
	again, err = l.QueryAudit(ctx, storage.AuditQuery{Ascending: true})
	check(t, "QueryAudit", err)
	if again.Records[0].Reason == full.Reason {
		t.Fatal("changing a record after AppendAudit changed the store")
	}
}

func testAuditAllOrNothing(t *testing.T, l storage.AuditLog) {
	ctx := testContext(t)
	check(t, "AppendAudit", l.AppendAudit(ctx, []*storage.AuditRecord{rec("x", 0)}))
	bad := []*storage.AuditRecord{rec("x", 1), {ID: "no-chain", Time: base}}
	checkIs(t, "AppendAudit(record without chain)", l.AppendAudit(ctx, bad), storage.ErrInvalid)
	bad = []*storage.AuditRecord{rec("x", 1), {ID: "no-time", Chain: "x"}}
	checkIs(t, "AppendAudit(record without time)", l.AppendAudit(ctx, bad), storage.ErrInvalid)
	page, err := l.QueryAudit(ctx, storage.AuditQuery{})
	check(t, "QueryAudit", err)
	if len(page.Records) != 1 {
		t.Fatalf("a rejected batch left %d records, want 1", len(page.Records))
	}
	next := []*storage.AuditRecord{rec("x", 2)}
	check(t, "AppendAudit", l.AppendAudit(ctx, next))
	if next[0].Seq != 2 {
		t.Fatalf("after a rejected batch the next Seq = %d, want 2", next[0].Seq)
	}
	rep, err := l.VerifyAudit(ctx, "x")
	check(t, "VerifyAudit", err)
	if !rep.OK || rep.Records != 2 {
		t.Fatalf("VerifyAudit = %+v, want OK with 2 records", rep)
	}
}

// queryAll pages through q with the given page size and returns everything.
func queryAll(t *testing.T, l storage.AuditLog, q storage.AuditQuery) []*storage.AuditRecord {
	t.Helper()
	ctx := testContext(t)
	var out []*storage.AuditRecord
	for pages := 0; ; pages++ {
		if pages > 1000 {
			t.Fatalf("QueryAudit(%+v): cursor never ends", q)
		}
		page, err := l.QueryAudit(ctx, q)
		check(t, "QueryAudit", err)
		if len(page.Records) > q.PageSize() {
			t.Fatalf("QueryAudit returned %d records, more than the limit %d", len(page.Records), q.PageSize())
		}
		if page.NextCursor != "" && len(page.Records) < q.PageSize() {
			t.Fatalf("QueryAudit returned a short page (%d < %d) with a cursor", len(page.Records), q.PageSize())
		}
		out = append(out, page.Records...)
		if page.NextCursor == "" {
			return out
		}
		q.Cursor = page.NextCursor
	}
}

func ids(recs []*storage.AuditRecord) []string {
	s := make([]string, len(recs))
	for i, r := range recs {
		s[i] = fmt.Sprintf("%s/%d", r.Chain, r.Seq)
	}
	return s
}

func testAuditQuery(t *testing.T, l storage.AuditLog) {
	ctx := testContext(t)
	var all []*storage.AuditRecord
	for i := range 130 {
		// Two chains with interleaved, partly equal times exercise the
		// (Time, Chain, Seq) order and its tie-breaks.
		r := rec([]string{"gw-1", "gw-2"}[i%2], i)
		check(t, "AppendAudit", l.AppendAudit(ctx, []*storage.AuditRecord{r}))
		all = append(all, r)
	}
	sorted := slices.Clone(all)
	slices.SortFunc(sorted, func(a, b *storage.AuditRecord) int {
		return storage.PositionOf(a).Compare(storage.PositionOf(b))
	})

	queries := []storage.AuditQuery{
		{},
		{Org: "acme"},
		{Org: "globex", Team: "ops"},
		{Org: "acme", Team: "eng", Agent: "agent-2"},
		{Agent: "agent-3"},
		{SessionID: "sess-1"},
		{TraceID: "trace-5"},
		{Kind: action.KindNetworkCall},
		{Decision: action.Deny},
		{Event: storage.EventGovernance},
		{Since: base.Add(10 * time.Second)},
		{Until: base.Add(20 * time.Second)},
		{Since: base.Add(10*time.Second + 3), Until: base.Add(30*time.Second + 5)},
		{Org: "acme", Decision: action.Allow, Since: base.Add(5 * time.Second)},
		{Org: "nobody"},
	}
	for _, q := range queries {
		var want []*storage.AuditRecord
		for _, r := range sorted {
			if q.Matches(r) {
				want = append(want, r)
			}
		}
		for _, asc := range []bool{true, false} {
			for _, limit := range []int{0, 7, 1000} {
				q := q
				q.Ascending, q.Limit = asc, limit
				got := queryAll(t, l, q)
				w := want
				if !asc {
					w = slices.Clone(want)
					slices.Reverse(w)
				}
				if !slices.Equal(ids(got), ids(w)) {
					t.Fatalf("QueryAudit(%+v):\n got %v\nwant %v", q, ids(got), ids(w))
				}
			}
		}
	}

	// Default and maximum page sizes.
	page, err := l.QueryAudit(ctx, storage.AuditQuery{})
	check(t, "QueryAudit", err)
	if len(page.Records) != storage.DefaultAuditLimit || page.NextCursor == "" {
		t.Fatalf("default page: %d records, cursor %q; want %d and a cursor", len(page.Records), page.NextCursor, storage.DefaultAuditLimit)
	}
	page, err = l.QueryAudit(ctx, storage.AuditQuery{Limit: 5000})
	check(t, "QueryAudit", err)
	if len(page.Records) != len(all) || page.NextCursor != "" {
		t.Fatalf("large limit: %d records, cursor %q; want %d and none", len(page.Records), page.NextCursor, len(all))
	}
	// Exactly one full page has no cursor.
	page, err = l.QueryAudit(ctx, storage.AuditQuery{Limit: len(all)})
	check(t, "QueryAudit", err)
	if page.NextCursor != "" {
		t.Fatalf("a page holding the last record has cursor %q, want none", page.NextCursor)
	}
	// Bad cursors are rejected, not treated as the first page.
	for _, cur := range []string{"not a cursor", "AAAA", "%%%"} {
		_, err = l.QueryAudit(ctx, storage.AuditQuery{Cursor: cur})
		checkIs(t, fmt.Sprintf("QueryAudit(cursor %q)", cur), err, storage.ErrInvalid)
	}
	// Records appended after a cursor was issued appear on later pages in
	// ascending order.
	page, err = l.QueryAudit(ctx, storage.AuditQuery{Ascending: true, Limit: len(all)})
	check(t, "QueryAudit", err)
	last := page.Records[len(page.Records)-1]
	cursor := storage.PositionOf(last).Cursor()
	late := rec("gw-1", 500)
	check(t, "AppendAudit", l.AppendAudit(ctx, []*storage.AuditRecord{late}))
	page, err = l.QueryAudit(ctx, storage.AuditQuery{Ascending: true, Cursor: cursor})
	check(t, "QueryAudit", err)
	if len(page.Records) != 1 || page.Records[0].ID != late.ID {
		t.Fatalf("page after the last cursor = %v, want the late record", ids(page.Records))
	}
}

func testAuditConcurrent(t *testing.T, l storage.AuditLog) {
	ctx := testContext(t)
	const workers, appends = 64, 6
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range appends {
				batch := make([]*storage.AuditRecord, 1+(w+i)%3)
				for j := range batch {
					batch[j] = rec("busy", w*1000+i*10+j)
				}
				if err := l.AppendAudit(ctx, batch); err != nil {
					errs <- err
					return
				}
				for j := 1; j < len(batch); j++ {
					if batch[j].Seq != batch[j-1].Seq+1 {
						errs <- fmt.Errorf("a batch was interleaved with another: seqs %d then %d", batch[j-1].Seq, batch[j].Seq)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent AppendAudit: %v", err)
	}
	want := 0
	for w := range workers {
		for i := range appends {
			want += 1 + (w+i)%3
		}
	}
	got := queryAll(t, l, storage.AuditQuery{Limit: 1000})
	if len(got) != want {
		t.Fatalf("%d records stored, want %d", len(got), want)
	}
	seqs := make([]int64, len(got))
	for i, r := range got {
		seqs[i] = r.Seq
	}
	slices.Sort(seqs)
	for i, s := range seqs {
		if s != int64(i+1) {
			t.Fatalf("sequence numbers are not 1..%d without gaps or duplicates: position %d has %d", want, i, s)
		}
	}
	rep, err := l.VerifyAudit(ctx, "busy")
	check(t, "VerifyAudit", err)
	if !rep.OK || rep.Records != int64(want) {
		t.Fatalf("VerifyAudit after concurrent appends = %+v, want OK with %d records", rep, want)
	}
}

func appendN(t *testing.T, l storage.AuditLog, chain string, n int) []*storage.AuditRecord {
	t.Helper()
	recs := make([]*storage.AuditRecord, n)
	for i := range recs {
		recs[i] = rec(chain, i)
	}
	check(t, "AppendAudit", l.AppendAudit(testContext(t), recs))
	return recs
}

func testAuditVerify(t *testing.T, l storage.AuditLog) {
	ctx := testContext(t)
	recs := appendN(t, l, "v", 25)
	appendN(t, l, "other", 3)
	rep, err := l.VerifyAudit(ctx, "v")
	check(t, "VerifyAudit", err)
	want := storage.VerifyReport{Chain: "v", Records: 25, OK: true, Head: recs[24].Hash}
	if rep.Chain != want.Chain || rep.Records != want.Records || !rep.OK || rep.FirstBadSeq != 0 || rep.Problem != "" || !bytes.Equal(rep.Head, want.Head) {
		t.Fatalf("VerifyAudit = %+v, want %+v", rep, want)
	}
	_, err = l.VerifyAudit(ctx, "no-such-chain")
	checkIs(t, "VerifyAudit(unknown chain)", err, storage.ErrNotFound)
}

// testAuditCheckpoints appends signed checkpoints alone and inside batches:
// the driver must seal each one over the head it lands after, store the
// signed payload, and verify it.
func testAuditCheckpoints(t *testing.T, l storage.AuditLog) {
	ctx := testContext(t)
	s, err := storage.NewCheckpointSigner(bytes.Repeat([]byte{7}, 32))
	check(t, "NewCheckpointSigner", err)
	appendN(t, l, "cp", 5)
	first := s.Record("cp", "cp-1", base.Add(time.Hour))
	check(t, "AppendAudit(checkpoint)", l.AppendAudit(ctx, []*storage.AuditRecord{first}))
	batch := []*storage.AuditRecord{rec("cp", 100), s.Record("cp", "cp-2", base.Add(2*time.Hour)), rec("cp", 101)}
	check(t, "AppendAudit(batch with a checkpoint)", l.AppendAudit(ctx, batch))
	if first.Seq != 6 || batch[1].Seq != 8 {
		t.Fatalf("checkpoints landed at %d and %d, want 6 and 8", first.Seq, batch[1].Seq)
	}
	rep, err := l.VerifyAudit(ctx, "cp")
	check(t, "VerifyAudit", err)
	if !rep.OK || rep.Records != 9 || rep.Checkpoints != 2 || rep.LastCheckpointSeq != 8 {
		t.Fatalf("VerifyAudit = %+v, want OK over 9 records with checkpoints at 6 and 8", rep)
	}
	if len(rep.CheckpointKeys) != 1 || rep.CheckpointKeys[0].ID != s.KeyID() || rep.CheckpointKeys[0].FirstSeq != 6 {
		t.Fatalf("checkpoint keys = %+v, want %s first at 6", rep.CheckpointKeys, s.KeyID())
	}
	page, err := l.QueryAudit(ctx, storage.AuditQuery{Event: storage.EventGovernance, Limit: 100})
	check(t, "QueryAudit", err)
	var got []string
	for _, r := range page.Records {
		if storage.IsCheckpoint(r) {
			if !bytes.Contains(r.Payload, []byte(`"signature"`)) {
				t.Errorf("checkpoint %s stored payload %s, want the signed checkpoint", r.ID, r.Payload)
			}
			got = append(got, r.ID)
		}
	}
	if len(got) != 2 {
		t.Fatalf("query found checkpoints %v, want cp-1 and cp-2", got)
	}
}

// testAuditAnchors passes heads kept outside the database to VerifyAudit:
// the driver must check them against the records it streams.
func testAuditAnchors(t *testing.T, l storage.AuditLog) {
	ctx := testContext(t)
	recs := appendN(t, l, "anc", 6)
	rep, err := l.VerifyAudit(ctx, "anc", storage.ChainHead{Seq: 3, Hash: recs[2].Hash}, storage.ChainHead{Seq: 6, Hash: recs[5].Hash})
	check(t, "VerifyAudit(anchored)", err)
	if !rep.OK || rep.HeadSeq != 6 {
		t.Fatalf("VerifyAudit with true anchors = %+v, want OK through 6", rep)
	}
	rep, err = l.VerifyAudit(ctx, "anc", storage.ChainHead{Seq: 3, Hash: recs[3].Hash})
	check(t, "VerifyAudit(wrong anchor)", err)
	if rep.OK || rep.FirstBadSeq != 3 || !strings.HasPrefix(rep.Problem, storage.ProblemAnchor) {
		t.Fatalf("VerifyAudit with a wrong anchor at 3 = %+v, want record 3 named", rep)
	}
	rep, err = l.VerifyAudit(ctx, "anc", storage.ChainHead{Seq: 9, Hash: recs[5].Hash})
	check(t, "VerifyAudit(anchor beyond the end)", err)
	if rep.OK || rep.FirstBadSeq != 7 || !strings.HasPrefix(rep.Problem, storage.ProblemTruncated) {
		t.Fatalf("VerifyAudit anchored at 9 of 6 records = %+v, want truncation from 7", rep)
	}
}

func testAuditTamper(t *testing.T, c *config, l storage.AuditLog) {
	ctx := testContext(t)
	appendN(t, l, "t", 12)
	appendN(t, l, "untouched", 4)
	c.tamper(t, l, "t", 7)
	rep, err := l.VerifyAudit(ctx, "t")
	check(t, "VerifyAudit", err)
	if rep.OK || rep.FirstBadSeq != 7 || !strings.HasPrefix(rep.Problem, storage.ProblemHashMismatch) {
		t.Fatalf("VerifyAudit after changing one byte of record 7 = %+v; want not OK, FirstBadSeq 7, Problem %q...", rep, storage.ProblemHashMismatch)
	}
	if rep.Records != 6 {
		t.Fatalf("VerifyAudit counted %d good records before the bad one, want 6", rep.Records)
	}
	rep, err = l.VerifyAudit(ctx, "untouched")
	check(t, "VerifyAudit", err)
	if !rep.OK {
		t.Fatalf("tampering with chain t broke chain untouched: %+v", rep)
	}
}

func testAuditTail(t *testing.T, l storage.AuditLog) {
	ctx := testContext(t)
	appendN(t, l, "tail", 2) // before the tail: not delivered
	tctx, cancel := context.WithCancel(ctx)
	ch, err := l.TailAudit(tctx)
	check(t, "TailAudit", err)
	ch2, err := l.TailAudit(tctx)
	check(t, "TailAudit", err)
	check(t, "AppendAudit", l.AppendAudit(ctx, []*storage.AuditRecord{rec("tail", 10), rec("tail", 11)}))
	check(t, "AppendAudit", l.AppendAudit(ctx, []*storage.AuditRecord{rec("tail-b", 12)}))
	for _, c := range []<-chan *storage.AuditRecord{ch, ch2} {
		var got []string
		for range 3 {
			r := recv(t, c, 5*time.Second, "TailAudit")
			if len(r.Hash) != storage.HashSize {
				t.Fatalf("tailed record %s/%d has no hash", r.Chain, r.Seq)
			}
			got = append(got, fmt.Sprintf("%s/%d/%s", r.Chain, r.Seq, r.ID))
		}
		want := []string{"tail/3/dec-tail-0010", "tail/4/dec-tail-0011", "tail-b/1/dec-tail-b-0012"}
		if !slices.Equal(got, want) {
			t.Fatalf("TailAudit delivered %v, want %v", got, want)
		}
	}
	quiet(t, ch, 50*time.Millisecond, "TailAudit after the last append")
	cancel()
	closes(t, ch, 5*time.Second, "TailAudit")
	closes(t, ch2, 5*time.Second, "TailAudit")
}

func testAuditShared(t *testing.T, a, b storage.AuditLog) {
	ctx := testContext(t)
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tail, err := b.TailAudit(tctx)
	check(t, "TailAudit on the second instance", err)
	first := appendN(t, a, "shared", 3)
	r := recv(t, tail, 5*time.Second, "TailAudit on the second instance")
	if r.ID != first[0].ID {
		t.Fatalf("second instance tailed %s, want %s", r.ID, first[0].ID)
	}
	// Both instances append to one chain: seqs continue, the chain verifies.
	var wg sync.WaitGroup
	for _, l := range []storage.AuditLog{a, b, a, b} {
		wg.Go(func() {
			for i := range 5 {
				if err := l.AppendAudit(ctx, []*storage.AuditRecord{rec("shared", 100+i)}); err != nil {
					t.Errorf("AppendAudit: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	rep, err := a.VerifyAudit(ctx, "shared")
	check(t, "VerifyAudit", err)
	if !rep.OK || rep.Records != 23 {
		t.Fatalf("VerifyAudit after appends from two instances = %+v, want OK with 23 records", rep)
	}
	page, err := b.QueryAudit(ctx, storage.AuditQuery{Limit: 1000})
	check(t, "QueryAudit on the second instance", err)
	if len(page.Records) != 23 {
		t.Fatalf("second instance sees %d records, want 23", len(page.Records))
	}
}
