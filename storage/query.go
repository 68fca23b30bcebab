package storage

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
)

// Audit query page sizes.
const (
	DefaultAuditLimit = 100
	MaxAuditLimit     = 1000
)

// PageSize is the number of records a driver returns for q: Limit, or
// DefaultAuditLimit when Limit <= 0, capped at MaxAuditLimit.
func (q AuditQuery) PageSize() int {
	switch {
	case q.Limit <= 0:
		return DefaultAuditLimit
	case q.Limit > MaxAuditLimit:
		return MaxAuditLimit
	}
	return q.Limit
}

// Matches reports whether r passes every filter of q except the cursor.
// Since is inclusive and Until exclusive.
func (q AuditQuery) Matches(r *AuditRecord) bool {
	switch {
	case q.Org != "" && r.Agent.Org != q.Org,
		q.Team != "" && r.Agent.Team != q.Team,
		q.Agent != "" && r.Agent.Agent != q.Agent,
		q.SessionID != "" && r.SessionID != q.SessionID,
		q.TraceID != "" && r.TraceID != q.TraceID,
		q.Kind != 0 && r.Kind != q.Kind,
		q.Decision != 0 && r.Decision != q.Decision,
		q.Event != "" && r.Event != q.Event,
		!q.Since.IsZero() && r.Time.Before(q.Since),
		!q.Until.IsZero() && !r.Time.Before(q.Until):
		return false
	}
	return true
}

// AuditPosition is where a record sits in the order every driver pages the
// audit log by: Time, then Chain, then Seq. Newest first reverses it.
type AuditPosition struct {
	// TimeNanos is the record's Time in Unix nanoseconds.
	TimeNanos int64
	Chain     string
	Seq       int64
}

// PositionOf returns r's position.
func PositionOf(r *AuditRecord) AuditPosition {
	return AuditPosition{TimeNanos: r.Time.UnixNano(), Chain: r.Chain, Seq: r.Seq}
}

// Compare returns -1, 0 or +1 as p sorts before, with or after o in
// ascending order.
func (p AuditPosition) Compare(o AuditPosition) int {
	switch {
	case p.TimeNanos != o.TimeNanos:
		return cmpInt(p.TimeNanos, o.TimeNanos)
	case p.Chain != o.Chain:
		return strings.Compare(p.Chain, o.Chain)
	}
	return cmpInt(p.Seq, o.Seq)
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// After reports whether a record at position r belongs on a page that
// continues from cursor position p in the given direction.
func (p AuditPosition) After(r AuditPosition, ascending bool) bool {
	if ascending {
		return r.Compare(p) > 0
	}
	return r.Compare(p) < 0
}

const cursorVersion = 1

// Cursor encodes p as an opaque AuditPage.NextCursor.
func (p AuditPosition) Cursor() string {
	b := make([]byte, 0, 24+len(p.Chain))
	b = append(b, cursorVersion)
	b = binary.AppendVarint(b, p.TimeNanos)
	b = binary.AppendVarint(b, p.Seq)
	b = append(b, p.Chain...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParseAuditCursor decodes an AuditQuery.Cursor. An empty cursor returns
// ok=false; a malformed one returns an error wrapping ErrInvalid.
func ParseAuditCursor(s string) (p AuditPosition, ok bool, err error) {
	if s == "" {
		return AuditPosition{}, false, nil
	}
	bad := func() (AuditPosition, bool, error) {
		return AuditPosition{}, false, fmt.Errorf("parse audit cursor %q: not a cursor from a previous page: %w", s, ErrInvalid)
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 1 || b[0] != cursorVersion {
		return bad()
	}
	b = b[1:]
	t, n := binary.Varint(b)
	if n <= 0 {
		return bad()
	}
	b = b[n:]
	seq, n := binary.Varint(b)
	if n <= 0 || seq < 1 {
		return bad()
	}
	return AuditPosition{TimeNanos: t, Seq: seq, Chain: string(b[n:])}, true, nil
}

// NextPage builds the page for recs, which the driver fetched in page order
// with a limit of PageSize()+1 to learn whether more exist: it trims recs to
// the page size and sets NextCursor when there are more.
func (q AuditQuery) NextPage(recs []*AuditRecord) AuditPage {
	n := q.PageSize()
	if len(recs) <= n {
		return AuditPage{Records: recs}
	}
	recs = recs[:n]
	return AuditPage{Records: recs, NextCursor: PositionOf(recs[n-1]).Cursor()}
}

// UnixNanos returns t in Unix nanoseconds, or 0 for the zero time. Drivers
// store times this way so they round-trip exactly (the audit hash covers
// nanoseconds).
func UnixNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// FromUnixNanos is the inverse of UnixNanos: 0 gives the zero time, anything
// else a UTC time.
func FromUnixNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
