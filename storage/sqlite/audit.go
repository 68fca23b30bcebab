package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

const auditColumns = `chain, seq, id, time_ns, event, org, team, agent, session_id, trace_id, span_id,
	kind, payload, decision, rule_id, policy_version, mode, shadow_decision, reason, latency_ns, prev_hash, hash`

const (
	selectHeadSQL = `SELECT seq, hash FROM audit_chains WHERE chain = ?`
	upsertHeadSQL = `INSERT INTO audit_chains (chain, seq, hash) VALUES (?, ?, ?)
		ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash`
)

const insertAuditSQL = `INSERT INTO audit (` + auditColumns + `)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// AppendAudit links recs to their chains and stores them in one transaction.
func (s *Store) AppendAudit(ctx context.Context, recs []*storage.AuditRecord) error {
	if len(recs) == 0 {
		return nil
	}
	for _, r := range recs {
		if err := storage.ValidateRecord(r); err != nil {
			return fmt.Errorf("append audit: %w", err)
		}
	}
	s.hub.appendMu.Lock()
	defer s.hub.appendMu.Unlock()
	err := s.write(ctx, func(tx *sql.Tx) error {
		heads, err := storage.LinkRecords(recs, func(chain string) (storage.ChainHead, error) {
			var h storage.ChainHead
			err := tx.StmtContext(ctx, s.selectHead).QueryRowContext(ctx, chain).Scan(&h.Seq, &h.Hash)
			if errors.Is(err, sql.ErrNoRows) {
				return storage.ChainHead{}, nil
			}
			return h, err
		})
		if err != nil {
			return err
		}
		ins := tx.StmtContext(ctx, s.insertAudit)
		for _, r := range recs {
			_, err := ins.ExecContext(ctx, r.Chain, r.Seq, r.ID, r.Time.UnixNano(), string(r.Event),
				r.Agent.Org, r.Agent.Team, r.Agent.Agent, r.SessionID, r.TraceID, r.SpanID,
				int64(r.Kind), r.Payload, int64(r.Decision), r.RuleID, r.PolicyVersion, int64(r.Mode),
				int64(r.ShadowDecision), r.Reason, int64(r.Latency), r.PrevHash, r.Hash)
			if err != nil {
				return err
			}
		}
		for chain, h := range heads {
			if _, err := tx.StmtContext(ctx, s.upsertHead).ExecContext(ctx, chain, h.Seq, h.Hash); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("append audit: %w", wrapErr(err))
	}
	for _, r := range recs {
		s.hub.tail.Publish(r.Clone())
	}
	return nil
}

type scanner interface{ Scan(dest ...any) error }

func scanRecord(row scanner) (*storage.AuditRecord, error) {
	var (
		r                                     storage.AuditRecord
		timeNS, kind, dec, mode, shadow, latN int64
		event                                 string
	)
	err := row.Scan(&r.Chain, &r.Seq, &r.ID, &timeNS, &event, &r.Agent.Org, &r.Agent.Team, &r.Agent.Agent,
		&r.SessionID, &r.TraceID, &r.SpanID, &kind, &r.Payload, &dec, &r.RuleID, &r.PolicyVersion, &mode,
		&shadow, &r.Reason, &latN, &r.PrevHash, &r.Hash)
	if err != nil {
		return nil, err
	}
	r.Time = storage.FromUnixNanos(timeNS)
	r.Event = storage.RecordEvent(event)
	r.Kind, r.Decision, r.Mode, r.ShadowDecision = action.Kind(kind), action.Decision(dec), action.Mode(mode), action.Decision(shadow)
	r.Latency = time.Duration(latN)
	return &r, nil
}

// QueryAudit returns one page of matching records.
func (s *Store) QueryAudit(ctx context.Context, q storage.AuditQuery) (storage.AuditPage, error) {
	cur, hasCur, err := storage.ParseAuditCursor(q.Cursor)
	if err != nil {
		return storage.AuditPage{}, fmt.Errorf("query audit: %w", err)
	}
	var where []string
	var args []any
	eq := func(col string, v any) {
		where = append(where, col+" = ?")
		args = append(args, v)
	}
	if q.Org != "" {
		eq("org", q.Org)
	}
	if q.Team != "" {
		eq("team", q.Team)
	}
	if q.Agent != "" {
		eq("agent", q.Agent)
	}
	if q.SessionID != "" {
		eq("session_id", q.SessionID)
	}
	if q.TraceID != "" {
		eq("trace_id", q.TraceID)
	}
	if q.Kind != 0 {
		eq("kind", int64(q.Kind))
	}
	if q.Decision != 0 {
		eq("decision", int64(q.Decision))
	}
	if q.Event != "" {
		eq("event", string(q.Event))
	}
	if !q.Since.IsZero() {
		where = append(where, "time_ns >= ?")
		args = append(args, q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		where = append(where, "time_ns < ?")
		args = append(args, q.Until.UnixNano())
	}
	order, cmp := "DESC", "<"
	if q.Ascending {
		order, cmp = "ASC", ">"
	}
	if hasCur {
		where = append(where, "(time_ns, chain, seq) "+cmp+" (?, ?, ?)")
		args = append(args, cur.TimeNanos, cur.Chain, cur.Seq)
	}
	var b strings.Builder
	b.WriteString("SELECT " + auditColumns + " FROM audit")
	if len(where) > 0 {
		b.WriteString(" WHERE " + strings.Join(where, " AND "))
	}
	fmt.Fprintf(&b, " ORDER BY time_ns %[1]s, chain %[1]s, seq %[1]s LIMIT ?", order)
	args = append(args, q.PageSize()+1)
	rows, err := s.reader.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return storage.AuditPage{}, fmt.Errorf("query audit: %w", wrapErr(err))
	}
	defer rows.Close()
	out := make([]*storage.AuditRecord, 0, min(q.PageSize()+1, 128))
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return storage.AuditPage{}, fmt.Errorf("query audit: %w", wrapErr(err))
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return storage.AuditPage{}, fmt.Errorf("query audit: %w", wrapErr(err))
	}
	return q.NextPage(out), nil
}

// TailAudit delivers records appended after the call by any Store on this
// file in this process.
func (s *Store) TailAudit(ctx context.Context) (<-chan *storage.AuditRecord, error) {
	return s.hub.tail.Subscribe(ctx), nil
}

// AuditChains lists the chains, sorted.
func (s *Store) AuditChains(ctx context.Context) ([]string, error) {
	rows, err := s.reader.QueryContext(ctx, `SELECT chain FROM audit_chains UNION SELECT DISTINCT chain FROM audit ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("list audit chains: %w", wrapErr(err))
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, fmt.Errorf("list audit chains: %w", wrapErr(err))
		}
		out = append(out, c)
	}
	return out, wrapErr(rows.Err())
}

// VerifyAudit streams one chain through storage.ChainVerifier inside one
// read transaction, then checks the stored head.
func (s *Store) VerifyAudit(ctx context.Context, chain string) (storage.VerifyReport, error) {
	tx, err := s.reader.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, wrapErr(err))
	}
	defer tx.Rollback()
	var head storage.ChainHead
	err = tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit_chains WHERE chain = ?`, chain).Scan(&head.Seq, &head.Hash)
	hasHead := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, wrapErr(err))
	}
	rows, err := tx.QueryContext(ctx, `SELECT `+auditColumns+` FROM audit WHERE chain = ? ORDER BY seq`, chain)
	if err != nil {
		return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, wrapErr(err))
	}
	defer rows.Close()
	v := storage.NewChainVerifier(chain, storage.ChainHead{})
	n := 0
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, wrapErr(err))
		}
		n++
		if !v.Add(r) {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, wrapErr(err))
	}
	if n == 0 && !hasHead {
		return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, storage.ErrNotFound)
	}
	if hasHead {
		v.CheckHead(head)
	}
	return v.Report(), nil
}
