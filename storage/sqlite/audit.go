package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// AppendAudit links recs to their chains and journals them (see journal.go):
// durable on return as the Store's durability says, in audit_blocks shortly
// after, and visible to queries at once.
func (s *Store) AppendAudit(ctx context.Context, recs []*storage.AuditRecord) error {
	if len(recs) == 0 {
		return nil
	}
	for _, r := range recs {
		if err := storage.ValidateRecord(r); err != nil {
			return fmt.Errorf("append audit: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	s.hub.appendMu.Lock()
	s.hub.slowAppend.Store(true)
	defer func() {
		s.hub.slowAppend.Store(false)
		s.hub.appendMu.Unlock()
	}()
	if err := s.hub.audit.append(recs, s.opts.Durability == storage.DurabilitySync); err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	s.publish(recs)
	return nil
}

// TryAppendAudit is AppendAudit when it can be done at once, without
// waiting for a file or the disk, or for a lock longer than another inline
// append holds it (lockInline): in DurabilityOS with the journal's
// shared-memory copy (journal.go, shm.go), a copy into memory the kernel
// keeps. It reports false, having changed nothing, when it cannot; the
// caller then appends with AppendAudit (groupcommit does).
func (s *Store) TryAppendAudit(recs []*storage.AuditRecord) (bool, error) {
	if s.opts.Durability != storage.DurabilityOS || len(recs) == 0 {
		return false, nil
	}
	for _, r := range recs {
		if err := storage.ValidateRecord(r); err != nil {
			return true, fmt.Errorf("append audit: %w", err)
		}
	}
	if !s.hub.lockInline() {
		return false, nil
	}
	defer s.hub.appendMu.Unlock()
	ok, err := s.hub.audit.tryAppend(recs)
	if !ok {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("append audit: %w", err)
	}
	s.publish(recs)
	return true, nil
}

// defaultInlineWait bounds how long an inline append waits for another one to
// finish. Another inline append holds appendMu for a few microseconds (it
// links the records and copies them into shared memory, no I/O); giving up
// at once sent the record through the group-commit writer instead, whose
// hand-over and wake-ups cost more than the wait (at 1,000 checks/s about
// one check in a hundred overlapped another's append and paid 250 µs or
// more for it on the build machines).
const defaultInlineWait = 20 * time.Microsecond

// lockInline takes appendMu for an inline append: at once, or after
// waiting at most h.inlineWait for another inline append to release it. It
// does not wait while AppendAudit holds it (that may be doing I/O), and
// reports false when it gives up.
func (h *hub) lockInline() bool {
	if h.appendMu.TryLock() {
		return true
	}
	var deadline time.Time
	for i := 1; ; i++ {
		if h.slowAppend.Load() {
			return false
		}
		if h.appendMu.TryLock() {
			return true
		}
		if i%32 == 0 { // a clock read costs more than a look at the lock
			now := time.Now()
			if deadline.IsZero() {
				deadline = now.Add(h.inlineWait)
			} else if now.After(deadline) {
				return false
			}
		}
	}
}

// publish hands appended records to live tails (a copy per record, only
// when a tail listens).
func (s *Store) publish(recs []*storage.AuditRecord) {
	if s.hub.tail.Subscribers() > 0 {
		for _, r := range recs {
			s.hub.tail.Publish(r.Clone())
		}
	}
}

// indexed makes every record journaled so far visible to the read
// connections.
func (s *Store) indexed(ctx context.Context) error {
	return s.hub.audit.index(ctx)
}

// QueryAudit returns one page of matching records. Blocks are read in the
// page's order of their time range and decoded; the scan stops once no
// remaining block can hold a record that sorts into the page.
func (s *Store) QueryAudit(ctx context.Context, q storage.AuditQuery) (storage.AuditPage, error) {
	cur, hasCur, err := storage.ParseAuditCursor(q.Cursor)
	if err != nil {
		return storage.AuditPage{}, fmt.Errorf("query audit: %w", err)
	}
	if err := s.indexed(ctx); err != nil {
		return storage.AuditPage{}, fmt.Errorf("query audit: %w", err)
	}
	var where []string
	var args []any
	if !q.Since.IsZero() {
		where = append(where, "max_time_ns >= ?")
		args = append(args, q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		where = append(where, "min_time_ns < ?")
		args = append(args, q.Until.UnixNano())
	}
	order := "max_time_ns DESC"
	if q.Ascending {
		order = "min_time_ns ASC"
		if hasCur {
			where = append(where, "max_time_ns >= ?")
			args = append(args, cur.TimeNanos)
		}
	} else if hasCur {
		where = append(where, "min_time_ns <= ?")
		args = append(args, cur.TimeNanos)
	}
	var b strings.Builder
	b.WriteString("SELECT min_time_ns, max_time_ns, first_seq, encoding, data FROM audit_blocks")
	if len(where) > 0 {
		b.WriteString(" WHERE " + strings.Join(where, " AND "))
	}
	b.WriteString(" ORDER BY " + order)
	rows, err := s.reader.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return storage.AuditPage{}, fmt.Errorf("query audit: %w", wrapErr(err))
	}
	defer rows.Close()

	n := q.PageSize() + 1
	// before reports whether a sorts before b in the page's order.
	before := func(a, b storage.AuditPosition) bool {
		if q.Ascending {
			return a.Compare(b) < 0
		}
		return a.Compare(b) > 0
	}
	var page []*storage.AuditRecord
	var scratch []byte
	for rows.Next() {
		var lo, hi, first, encoding int64
		var stored []byte
		if err := rows.Scan(&lo, &hi, &first, &encoding, &stored); err != nil {
			return storage.AuditPage{}, fmt.Errorf("query audit: %w", wrapErr(err))
		}
		if len(page) == n {
			worst := page[n-1].Time.UnixNano()
			if (q.Ascending && lo > worst) || (!q.Ascending && hi < worst) {
				break // every later block sorts after the page's last record
			}
		}
		data, err := blockEntries(encoding, stored, &scratch)
		if err != nil {
			return storage.AuditPage{}, fmt.Errorf("query audit: audit block of chain starting at record %d is damaged (run audit verify): %w", first, err)
		}
		_, err = decodeEntries(data, func(r *storage.AuditRecord, _ []byte) error {
			if !q.Matches(r) {
				return nil
			}
			pos := storage.PositionOf(r)
			if hasCur && !before(cur, pos) {
				return nil
			}
			if len(page) == n && !before(pos, storage.PositionOf(page[n-1])) {
				return nil
			}
			i, _ := slices.BinarySearchFunc(page, pos, func(e *storage.AuditRecord, p storage.AuditPosition) int {
				if before(storage.PositionOf(e), p) {
					return -1
				}
				return 1
			})
			page = slices.Insert(page, i, r)
			if len(page) > n {
				page = page[:n]
			}
			return nil
		})
		if err != nil {
			return storage.AuditPage{}, fmt.Errorf("query audit: audit block of chain starting at record %d is damaged (run audit verify): %w", first, err)
		}
	}
	if err := rows.Err(); err != nil {
		return storage.AuditPage{}, fmt.Errorf("query audit: %w", wrapErr(err))
	}
	return q.NextPage(page), nil
}

// TailAudit delivers records appended after the call by any Store on this
// file in this process.
func (s *Store) TailAudit(ctx context.Context) (<-chan *storage.AuditRecord, error) {
	return s.hub.tail.Subscribe(ctx), nil
}

// AuditChains lists the chains, sorted.
func (s *Store) AuditChains(ctx context.Context) ([]string, error) {
	if err := s.indexed(ctx); err != nil {
		return nil, fmt.Errorf("list audit chains: %w", err)
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT chain FROM audit_chains UNION SELECT DISTINCT chain FROM audit_blocks ORDER BY 1`)
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
// read transaction, then checks the stored head. A record whose stored form
// cannot be decoded is reported as the first bad record.
func (s *Store) VerifyAudit(ctx context.Context, chain string, anchors ...storage.ChainHead) (storage.VerifyReport, error) {
	if err := s.indexed(ctx); err != nil {
		return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, err)
	}
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
	rows, err := tx.QueryContext(ctx, `SELECT first_seq, encoding, data FROM audit_blocks WHERE chain = ? ORDER BY first_seq`, chain)
	if err != nil {
		return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, wrapErr(err))
	}
	defer rows.Close()
	v := storage.NewChainVerifier(chain, storage.ChainHead{})
	v.Anchor(anchors...)
	blocks := 0
	stop := errors.New("stop")
	var scratch []byte
	for rows.Next() {
		var first, encoding int64
		var stored []byte
		if err := rows.Scan(&first, &encoding, &stored); err != nil {
			return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, wrapErr(err))
		}
		blocks++
		data, err := blockEntries(encoding, stored, &scratch)
		if err != nil {
			v.Unreadable(first, err) // no record of the block can be read
			break
		}
		i, err := decodeEntries(data, func(r *storage.AuditRecord, _ []byte) error {
			if !v.Add(r) {
				return stop
			}
			return nil
		})
		if errors.Is(err, stop) {
			break
		}
		if err != nil {
			v.Unreadable(first+int64(i), err)
			break
		}
	}
	if err := rows.Err(); err != nil {
		return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, wrapErr(err))
	}
	if blocks == 0 && !hasHead {
		return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, storage.ErrNotFound)
	}
	if hasHead {
		v.CheckHead(head)
	}
	return v.Report(), nil
}

// legacyAuditColumns are the columns of the audit table before migration
// 0005, read once to convert its rows into blocks.
const legacyAuditColumns = `chain, seq, id, time_ns, event, org, team, agent, session_id, trace_id, span_id,
	kind, payload, decision, rule_id, policy_version, mode, shadow_decision, reason, latency_ns, prev_hash, hash`

type scanner interface{ Scan(dest ...any) error }

func scanLegacyRecord(row scanner) (*storage.AuditRecord, error) {
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
