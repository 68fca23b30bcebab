package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// chainHead is this process's belief about where a chain ends. mu
// serialises this process's appends to the chain; the database checks the
// belief (audit_advance_head), so other processes appending to the same
// chain are detected rather than forked.
type chainHead struct {
	mu    sync.Mutex
	known bool
	head  storage.ChainHead
}

func (s *Store) chainHead(chain string) *chainHead {
	s.headsMu.Lock()
	defer s.headsMu.Unlock()
	h, ok := s.heads[chain]
	if !ok {
		h = &chainHead{}
		s.heads[chain] = h
	}
	return h
}

// errHeadMoved is SQLSTATE AA409 from audit_advance_head.
const errHeadMoved = "AA409"

func headMoved(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == errHeadMoved
}

const auditColumns = `chain, seq, id, time_ns, event, agent_org, agent_team, agent_name,
	session_id, trace_id, span_id, kind, payload, decision, rule_id, policy_version,
	mode, shadow_decision, reason, latency_ns, prev_hash, hash`

const insertAudit = `INSERT INTO audit_records (` + auditColumns + `)
SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::text[],
	$7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int2[], $13::bytea[],
	$14::int2[], $15::text[], $16::text[], $17::int2[], $18::int2[], $19::text[], $20::int8[],
	$21::bytea[], $22::bytea[])`

// AppendAudit appends recs in one transaction. Each chain's records get the
// next sequence numbers and are linked with storage.LinkRecords.
//
// The fast path costs one round trip: this process remembers each chain's
// head, and the transaction moves the head in the database only if it is
// still there. If another writer moved it (a second Store on the same
// chain), the transaction aborts and the append is redone on the slow path,
// which reads the heads with SELECT ... FOR UPDATE.
func (s *Store) AppendAudit(ctx context.Context, recs []*storage.AuditRecord) error {
	if len(recs) == 0 {
		return nil
	}
	for _, r := range recs {
		if err := storage.ValidateRecord(r); err != nil {
			return fmt.Errorf("append audit: %w", err)
		}
	}
	var chains []string
	for _, r := range recs {
		if !slices.Contains(chains, r.Chain) {
			chains = append(chains, r.Chain)
		}
	}
	slices.Sort(chains) // lock order
	heads := make(map[string]*chainHead, len(chains))
	for _, c := range chains {
		h := s.chainHead(c)
		h.mu.Lock()
		defer h.mu.Unlock()
		heads[c] = h
	}
	known := true
	for _, h := range heads {
		known = known && h.known
	}

	var newHeads map[string]storage.ChainHead
	err := s.do(ctx, "append audit", func(c *pgx.Conn) error {
		if known {
			old := make(map[string]storage.ChainHead, len(heads))
			for ch, h := range heads {
				old[ch] = h.head
			}
			nh, err := s.writeAudit(ctx, c, false, recs, old)
			if err == nil || !headMoved(err) {
				newHeads = nh
				return err
			}
		}
		// Slow path: read the heads under a row lock. A chain created
		// concurrently by another writer can still move under a first
		// append, so retry a few times.
		var err error
		for range 5 {
			newHeads, err = s.appendLocked(ctx, c, recs, chains)
			if err == nil || !headMoved(err) {
				return err
			}
		}
		return err
	})
	for ch, h := range heads {
		if err != nil {
			h.known = false
			continue
		}
		h.head, h.known = newHeads[ch], true
	}
	return err
}

// appendLocked starts a transaction, locks and reads the heads of chains,
// and appends.
func (s *Store) appendLocked(ctx context.Context, c *pgx.Conn, recs []*storage.AuditRecord, chains []string) (map[string]storage.ChainHead, error) {
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		return nil, err
	}
	old := make(map[string]storage.ChainHead, len(chains))
	rows, err := c.Query(ctx, `SELECT chain, head_seq, head_hash FROM audit_chains
		WHERE chain = ANY($1::text[]) ORDER BY chain FOR UPDATE`, chains)
	if err == nil {
		for rows.Next() {
			var ch string
			var h storage.ChainHead
			if err := rows.Scan(&ch, &h.Seq, &h.Hash); err != nil {
				rows.Close()
				break
			}
			old[ch] = h
		}
		rows.Close()
		err = rows.Err()
	}
	if err != nil {
		rollback(ctx, c)
		return nil, err
	}
	return s.writeAudit(ctx, c, true, recs, old)
}

// writeAudit links recs onto the heads old and sends, in one pipeline, the
// head moves, the insert and the commit, then a notification for tails. If
// inTx is false it opens the transaction itself.
func (s *Store) writeAudit(ctx context.Context, c *pgx.Conn, inTx bool, recs []*storage.AuditRecord, old map[string]storage.ChainHead) (map[string]storage.ChainHead, error) {
	newHeads, err := storage.LinkRecords(recs, func(chain string) (storage.ChainHead, error) {
		return old[chain], nil
	})
	if err != nil {
		if inTx {
			rollback(ctx, c)
		}
		return nil, err
	}
	b := &pgx.Batch{}
	if !inTx {
		b.Queue("BEGIN")
	}
	if s.opts.Durability == storage.DurabilityOS {
		b.Queue("SET LOCAL synchronous_commit = off")
	}
	chains := make([]string, 0, len(newHeads))
	for ch := range newHeads {
		chains = append(chains, ch)
	}
	slices.Sort(chains)
	for _, ch := range chains {
		o, n := old[ch], newHeads[ch]
		oldHash := o.Hash
		if o.Seq == 0 {
			oldHash = storage.GenesisHash()
		}
		b.Queue(`SELECT audit_advance_head($1, $2, $3, $4, $5)`, ch, o.Seq, oldHash, n.Seq, n.Hash)
	}
	b.Queue(insertAudit, auditArrays(recs)...)
	b.Queue("COMMIT")
	// After the commit, outside the transaction: a notifying transaction
	// holds a database-wide lock through its commit, which would serialise
	// the WAL flushes of every writer. If anything above failed the server
	// skips this too, so no tail hears of records that do not exist.
	for _, ch := range chains {
		b.Queue(`SELECT pg_notify($1, $2)`, s.channel, auditNotice(ch, old[ch].Seq+1, newHeads[ch].Seq))
	}
	err = c.SendBatch(ctx, b).Close()
	if err != nil {
		rollback(ctx, c)
		return nil, err
	}
	return newHeads, nil
}

// rollback ends a failed transaction so the connection can be reused; if
// that fails the pool discards the connection.
func rollback(ctx context.Context, c *pgx.Conn) {
	if c.IsClosed() || c.PgConn().TxStatus() == 'I' {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = c.Exec(ctx, "ROLLBACK")
}

// auditArrays turns recs into the column arrays of insertAudit.
func auditArrays(recs []*storage.AuditRecord) []any {
	n := len(recs)
	var (
		chain, id, event, org, team, name, sess, trace, span, rule, pv, reason = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		seq, tm, lat                                                           = make([]int64, n), make([]int64, n), make([]int64, n)
		kind, dec, mode, shadow                                                = make([]int16, n), make([]int16, n), make([]int16, n), make([]int16, n)
		payload, prev, hash                                                    = make([][]byte, n), make([][]byte, n), make([][]byte, n)
	)
	for i, r := range recs {
		chain[i], seq[i], id[i], tm[i], event[i] = r.Chain, r.Seq, r.ID, r.Time.UnixNano(), string(r.Event)
		org[i], team[i], name[i] = r.Agent.Org, r.Agent.Team, r.Agent.Agent
		sess[i], trace[i], span[i] = r.SessionID, r.TraceID, r.SpanID
		kind[i], dec[i], mode[i], shadow[i] = int16(r.Kind), int16(r.Decision), int16(r.Mode), int16(r.ShadowDecision)
		payload[i] = r.Payload
		if payload[i] == nil {
			payload[i] = []byte{}
		}
		rule[i], pv[i], reason[i], lat[i] = r.RuleID, r.PolicyVersion, r.Reason, int64(r.Latency)
		prev[i], hash[i] = r.PrevHash, r.Hash
	}
	return []any{chain, seq, id, tm, event, org, team, name, sess, trace, span, kind, payload,
		dec, rule, pv, mode, shadow, reason, lat, prev, hash}
}

// scanRecord reads one row of auditColumns.
func scanRecord(row pgx.Row) (*storage.AuditRecord, error) {
	r := &storage.AuditRecord{}
	var (
		tm, lat                 int64
		event                   string
		kind, dec, mode, shadow int16
	)
	err := row.Scan(&r.Chain, &r.Seq, &r.ID, &tm, &event, &r.Agent.Org, &r.Agent.Team, &r.Agent.Agent,
		&r.SessionID, &r.TraceID, &r.SpanID, &kind, &r.Payload, &dec, &r.RuleID, &r.PolicyVersion,
		&mode, &shadow, &r.Reason, &lat, &r.PrevHash, &r.Hash)
	if err != nil {
		return nil, err
	}
	r.Time = time.Unix(0, tm).UTC()
	r.Event = storage.RecordEvent(event)
	r.Kind, r.Decision, r.Mode, r.ShadowDecision = action.Kind(kind), action.Decision(dec), action.Mode(mode), action.Decision(shadow)
	r.Latency = time.Duration(lat)
	if len(r.Payload) == 0 {
		r.Payload = nil
	}
	return r, nil
}

// QueryAudit returns one page of q. Pages are keyset pages over
// (time_ns, chain, seq), so records appended meanwhile never shift a page.
func (s *Store) QueryAudit(ctx context.Context, q storage.AuditQuery) (storage.AuditPage, error) {
	pos, hasCursor, err := storage.ParseAuditCursor(q.Cursor)
	if err != nil {
		return storage.AuditPage{}, fmt.Errorf("query audit: %w", err)
	}
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	eq := func(col string, v any) { where = append(where, col+" = "+arg(v)) }
	if q.Org != "" {
		eq("agent_org", q.Org)
	}
	if q.Team != "" {
		eq("agent_team", q.Team)
	}
	if q.Agent != "" {
		eq("agent_name", q.Agent)
	}
	if q.SessionID != "" {
		eq("session_id", q.SessionID)
	}
	if q.TraceID != "" {
		eq("trace_id", q.TraceID)
	}
	if q.Kind != 0 {
		eq("kind", int16(q.Kind))
	}
	if q.Decision != 0 {
		eq("decision", int16(q.Decision))
	}
	if q.Event != "" {
		eq("event", string(q.Event))
	}
	if !q.Since.IsZero() {
		where = append(where, "time_ns >= "+arg(q.Since.UnixNano()))
	}
	if !q.Until.IsZero() {
		where = append(where, "time_ns < "+arg(q.Until.UnixNano()))
	}
	dir, cmp := "DESC", "<"
	if q.Ascending {
		dir, cmp = "ASC", ">"
	}
	if hasCursor {
		where = append(where, fmt.Sprintf("(time_ns, chain, seq) %s (%s, %s, %s)", cmp, arg(pos.TimeNanos), arg(pos.Chain), arg(pos.Seq)))
	}
	var sb strings.Builder
	sb.WriteString("SELECT " + auditColumns + " FROM audit_records")
	if len(where) > 0 {
		sb.WriteString(" WHERE " + strings.Join(where, " AND "))
	}
	fmt.Fprintf(&sb, " ORDER BY time_ns %[1]s, chain %[1]s, seq %[1]s LIMIT %[2]s", dir, arg(q.PageSize()+1))

	var recs []*storage.AuditRecord
	err = s.do(ctx, "query audit", func(c *pgx.Conn) error {
		recs = recs[:0]
		rows, err := c.Query(ctx, sb.String(), args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			r, err := scanRecord(rows)
			if err != nil {
				return err
			}
			recs = append(recs, r)
		}
		return rows.Err()
	})
	if err != nil {
		return storage.AuditPage{}, err
	}
	return q.NextPage(recs), nil
}

// AuditChains lists the chains, sorted.
func (s *Store) AuditChains(ctx context.Context) ([]string, error) {
	var chains []string
	err := s.do(ctx, "list audit chains", func(c *pgx.Conn) error {
		chains = chains[:0]
		rows, err := c.Query(ctx, `SELECT chain FROM audit_chains ORDER BY chain`)
		if err != nil {
			return err
		}
		chains, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return chains, err
}

// verifyPage is how many records VerifyAudit reads per query.
const verifyPage = 5000

// VerifyAudit streams the chain through storage.ChainVerifier in Seq order,
// then compares the last record with the head stored in audit_chains, which
// catches records deleted from the end. Head and records are read in one
// repeatable-read snapshot, so appends running meanwhile do not disturb it.
func (s *Store) VerifyAudit(ctx context.Context, chain string, anchors ...storage.ChainHead) (storage.VerifyReport, error) {
	var rep storage.VerifyReport
	err := s.do(ctx, "verify audit", func(c *pgx.Conn) error {
		opts := pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}
		return pgx.BeginTxFunc(ctx, c, opts, func(tx pgx.Tx) error {
			var head storage.ChainHead
			err := tx.QueryRow(ctx, `SELECT head_seq, head_hash FROM audit_chains WHERE chain = $1`, chain).Scan(&head.Seq, &head.Hash)
			if err != nil {
				return err
			}
			v := storage.NewChainVerifier(chain, storage.ChainHead{})
			v.Anchor(anchors...)
			var after int64
			for more := true; more; {
				rows, err := tx.Query(ctx, `SELECT `+auditColumns+` FROM audit_records
					WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3`, chain, after, verifyPage)
				if err != nil {
					return err
				}
				n := 0
				for rows.Next() {
					r, err := scanRecord(rows)
					if err != nil {
						rows.Close()
						return err
					}
					n++
					after = r.Seq
					if !v.Add(r) {
						break
					}
				}
				rows.Close()
				if err := rows.Err(); err != nil {
					return err
				}
				more = n == verifyPage && v.Report().OK
			}
			v.CheckHead(head)
			rep = v.Report()
			return nil
		})
	})
	if errors.Is(err, storage.ErrNotFound) {
		return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, storage.ErrNotFound)
	}
	return rep, err
}

// auditNotice is the NOTIFY payload telling tails that records from..to of
// chain were committed.
func auditNotice(chain string, from, to int64) string {
	return "a" + strconv.FormatInt(from, 10) + ":" + strconv.FormatInt(to, 10) + ":" + chain
}

func parseAuditNotice(p string) (chain string, from, to int64, ok bool) {
	a, rest, ok1 := strings.Cut(p, ":")
	b, chain, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 {
		return "", 0, 0, false
	}
	from, err1 := strconv.ParseInt(a, 10, 64)
	to, err2 := strconv.ParseInt(b, 10, 64)
	return chain, from, to, err1 == nil && err2 == nil
}
