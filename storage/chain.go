package storage

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
)

// HashSize is the length of an audit record hash (SHA-256).
const HashSize = sha256.Size

// recordEncodingMagic starts every canonical encoding. It names the format, so
// a future incompatible encoding can never collide with this one.
const recordEncodingMagic = "agent-assembly/audit-record/v1\n"

// Field tags of the canonical record encoding. Tags are part of the on-disk
// contract: never renumber or reuse one. A new optional field takes the next
// free tag and is omitted when zero, so records written before it existed hash
// exactly as they did.
const (
	tagChain          = 1
	tagSeq            = 2
	tagID             = 3
	tagTime           = 4
	tagEvent          = 5
	tagAgentOrg       = 6
	tagAgentTeam      = 7
	tagAgentName      = 8
	tagSessionID      = 9
	tagTraceID        = 10
	tagSpanID         = 11
	tagKind           = 12
	tagPayload        = 13
	tagDecision       = 14
	tagRuleID         = 15
	tagPolicyVersion  = 16
	tagMode           = 17
	tagShadowDecision = 18
	tagReason         = 19
	tagLatency        = 20
	tagPrevHash       = 21
)

// GenesisHash returns the PrevHash of the first record of every chain:
// HashSize zero bytes.
func GenesisHash() []byte { return make([]byte, HashSize) }

// AppendRecordEncoding appends the canonical encoding of r to dst and returns
// the extended slice. Hash is not part of the encoding; every other field is.
//
// The encoding is a fixed magic string followed by one entry per non-zero
// field in increasing tag order. An entry is uvarint(tag), uvarint(len(value)),
// value. Strings and byte slices are their bytes; integers and enumerations
// are 8-byte big-endian two's complement; Time is Unix nanoseconds (UTC, so
// the location and monotonic reading do not matter) and Latency is
// nanoseconds. Because every value is length-prefixed and tagged, two
// different records never share an encoding, and zero-valued fields added in
// later versions leave older encodings unchanged.
func AppendRecordEncoding(dst []byte, r *AuditRecord) []byte {
	dst = append(dst, recordEncodingMagic...)
	dst = appendString(dst, tagChain, r.Chain)
	dst = appendInt(dst, tagSeq, r.Seq)
	dst = appendString(dst, tagID, r.ID)
	if !r.Time.IsZero() {
		dst = appendFixed(dst, tagTime, uint64(r.Time.UnixNano()))
	}
	dst = appendString(dst, tagEvent, string(r.Event))
	dst = appendString(dst, tagAgentOrg, r.Agent.Org)
	dst = appendString(dst, tagAgentTeam, r.Agent.Team)
	dst = appendString(dst, tagAgentName, r.Agent.Agent)
	dst = appendString(dst, tagSessionID, r.SessionID)
	dst = appendString(dst, tagTraceID, r.TraceID)
	dst = appendString(dst, tagSpanID, r.SpanID)
	dst = appendInt(dst, tagKind, int64(r.Kind))
	dst = appendBytes(dst, tagPayload, r.Payload)
	dst = appendInt(dst, tagDecision, int64(r.Decision))
	dst = appendString(dst, tagRuleID, r.RuleID)
	dst = appendString(dst, tagPolicyVersion, r.PolicyVersion)
	dst = appendInt(dst, tagMode, int64(r.Mode))
	dst = appendInt(dst, tagShadowDecision, int64(r.ShadowDecision))
	dst = appendString(dst, tagReason, r.Reason)
	dst = appendInt(dst, tagLatency, int64(r.Latency))
	dst = appendBytes(dst, tagPrevHash, r.PrevHash)
	return dst
}

func appendString(dst []byte, tag uint64, v string) []byte {
	if v == "" {
		return dst
	}
	dst = binary.AppendUvarint(dst, tag)
	dst = binary.AppendUvarint(dst, uint64(len(v)))
	return append(dst, v...)
}

func appendBytes(dst []byte, tag uint64, v []byte) []byte {
	if len(v) == 0 {
		return dst
	}
	dst = binary.AppendUvarint(dst, tag)
	dst = binary.AppendUvarint(dst, uint64(len(v)))
	return append(dst, v...)
}

func appendInt(dst []byte, tag uint64, v int64) []byte {
	if v == 0 {
		return dst
	}
	return appendFixed(dst, tag, uint64(v))
}

func appendFixed(dst []byte, tag uint64, v uint64) []byte {
	dst = binary.AppendUvarint(dst, tag)
	dst = binary.AppendUvarint(dst, 8)
	return binary.BigEndian.AppendUint64(dst, v)
}

// HashRecord returns SHA-256 over the canonical encoding of r (every field
// except Hash). See AppendRecordEncoding for the encoding.
func HashRecord(r *AuditRecord) []byte {
	var buf [1024]byte
	sum := sha256.Sum256(AppendRecordEncoding(buf[:0], r))
	return sum[:]
}

// ValidateRecord checks what the caller of AppendAudit must set: a Chain and
// a Time. It returns an error wrapping ErrInvalid.
func ValidateRecord(r *AuditRecord) error {
	if r == nil {
		return fmt.Errorf("audit record is nil: %w", ErrInvalid)
	}
	if r.Chain == "" {
		return fmt.Errorf("audit record %q has no chain: %w", r.ID, ErrInvalid)
	}
	if r.Time.IsZero() {
		return fmt.Errorf("audit record %q has no time: %w", r.ID, ErrInvalid)
	}
	if t := r.Time.UnixNano(); t <= 0 || t == math.MaxInt64 {
		return fmt.Errorf("audit record %q has a time outside 1970..2262: %w", r.ID, ErrInvalid)
	}
	return nil
}

// ChainHead is the position of the last record of a chain. The zero value is
// the head of an empty chain.
type ChainHead struct {
	Seq  int64
	Hash []byte
}

// LinkRecords assigns Seq, PrevHash and Hash to recs in order, continuing each
// chain from the head that head returns for it. head is called once per
// distinct chain in recs, inside the driver's write transaction; a chain with
// no records yet has the zero ChainHead. LinkRecords returns the new head of
// every chain it touched, for drivers that store heads. It validates every
// record first and changes nothing if one is invalid.
func LinkRecords(recs []*AuditRecord, head func(chain string) (ChainHead, error)) (map[string]ChainHead, error) {
	for _, r := range recs {
		if err := ValidateRecord(r); err != nil {
			return nil, err
		}
	}
	heads := make(map[string]ChainHead, 1)
	var scratch []byte // one encoding buffer for the whole batch
	for _, r := range recs {
		h, ok := heads[r.Chain]
		if !ok {
			var err error
			if h, err = head(r.Chain); err != nil {
				return nil, fmt.Errorf("read head of audit chain %q: %w", r.Chain, err)
			}
		}
		heads[r.Chain], scratch = LinkRecord(r, h, scratch[:0])
	}
	return heads, nil
}

// LinkRecord makes r the record after head h (the zero ChainHead for the
// first record of a chain): it sets r's Seq, PrevHash and Hash and returns
// the chain's new head. It appends r's canonical encoding, which the hash is
// taken over, to enc and returns it, so a driver that stores the encoding
// does not build it twice. r must be valid (ValidateRecord).
func LinkRecord(r *AuditRecord, h ChainHead, enc []byte) (ChainHead, []byte) {
	if h.Seq == 0 {
		h.Hash = GenesisHash()
	}
	r.Seq = h.Seq + 1
	r.PrevHash = h.Hash
	if r.Seal != nil {
		r.Payload = r.Seal(h)
	}
	start := len(enc)
	enc = AppendRecordEncoding(enc, r)
	sum := sha256.Sum256(enc[start:])
	r.Hash = sum[:]
	return ChainHead{Seq: r.Seq, Hash: r.Hash}, enc
}

// Problems VerifyChain reports, at the start of VerifyReport.Problem.
const (
	ProblemHashMismatch = "hash mismatch: record content changed"
	ProblemPrevHash     = "previous_hash does not match record"
	ProblemSequenceGap  = "sequence gap"
	ProblemWrongChain   = "record belongs to another chain"
	ProblemTruncated    = "chain truncated"
	ProblemAnchor       = "record does not match its anchor"
)

// ChainVerifier checks the records of one chain fed to it in Seq order and
// stops at the first broken link. Drivers stream their records through it so
// every driver's VerifyAudit reports problems the same way.
type ChainVerifier struct {
	report  VerifyReport
	lastSeq int64
	last    []byte
	done    bool
	anchors map[int64][]byte // see Anchor
}

// NewChainVerifier returns a verifier for chain. start is the head before the
// first record that will be fed: the zero ChainHead to verify from the
// beginning, or a trusted earlier head (for example, one anchored outside the
// database) to verify only what follows it.
func NewChainVerifier(chain string, start ChainHead) *ChainVerifier {
	v := &ChainVerifier{report: VerifyReport{Chain: chain, OK: true}, lastSeq: start.Seq, last: start.Hash}
	if start.Seq == 0 {
		v.last = GenesisHash()
	}
	return v
}

// Anchor makes the verifier check that the chain holds record h.Seq with
// hash h.Hash for each h: heads kept outside the database (aasm audit verify
// --anchors), which catch a chain rewritten or cut short, checkpoints and
// stored head included. A record that differs, or a chain that ends before
// an anchor, fails the report. Anchors must not precede the start head.
func (v *ChainVerifier) Anchor(heads ...ChainHead) {
	for _, h := range heads {
		if h.Seq == v.lastSeq && !v.done {
			v.checkAnchor(h.Seq, v.last, h.Hash)
			continue
		}
		if v.anchors == nil {
			v.anchors = make(map[int64][]byte, len(heads))
		}
		v.anchors[h.Seq] = h.Hash
	}
}

func (v *ChainVerifier) checkAnchor(seq int64, got, want []byte) bool {
	if bytes.Equal(got, want) {
		return true
	}
	return v.fail(seq, fmt.Sprintf("%s: record %d has hash %s, the anchor says %s", ProblemAnchor, seq, shortHex(got), shortHex(want)))
}

// Add checks the next record. It returns false once a problem has been found;
// the caller may stop feeding records then.
func (v *ChainVerifier) Add(r *AuditRecord) bool {
	if v.done {
		return false
	}
	want := v.lastSeq + 1
	switch {
	case r.Chain != v.report.Chain:
		return v.fail(r.Seq, fmt.Sprintf("%s: record %d is in chain %q", ProblemWrongChain, r.Seq, r.Chain))
	case r.Seq > want:
		if want == r.Seq-1 {
			return v.fail(want, fmt.Sprintf("%s: record %d is missing (found %d after %d)", ProblemSequenceGap, want, r.Seq, v.lastSeq))
		}
		return v.fail(want, fmt.Sprintf("%s: records %d to %d are missing (found %d after %d)", ProblemSequenceGap, want, r.Seq-1, r.Seq, v.lastSeq))
	case r.Seq < want:
		return v.fail(r.Seq, fmt.Sprintf("%s: record %d appears after record %d (duplicate or out of order)", ProblemSequenceGap, r.Seq, v.lastSeq))
	}
	if got := HashRecord(r); !bytes.Equal(got, r.Hash) {
		return v.fail(r.Seq, fmt.Sprintf("%s: record %d stored hash %s, recomputed %s", ProblemHashMismatch, r.Seq, shortHex(r.Hash), shortHex(got)))
	}
	if !bytes.Equal(r.PrevHash, v.last) {
		return v.fail(r.Seq, fmt.Sprintf("%s %d: record %d has previous_hash %s, record %d has hash %s", ProblemPrevHash, v.lastSeq, r.Seq, shortHex(r.PrevHash), v.lastSeq, shortHex(v.last)))
	}
	if IsCheckpoint(r) {
		pub, err := verifyCheckpoint(r)
		if err != nil {
			return v.fail(r.Seq, fmt.Sprintf("%s: record %d: %v", ProblemCheckpoint, r.Seq, err))
		}
		v.addCheckpoint(r.Seq, pub)
	}
	if want, ok := v.anchors[r.Seq]; ok && !v.checkAnchor(r.Seq, r.Hash, want) {
		return false
	}
	v.lastSeq = r.Seq
	v.last = r.Hash
	v.report.Records++
	v.report.Head = r.Hash
	v.report.HeadSeq = r.Seq
	return true
}

func (v *ChainVerifier) addCheckpoint(seq int64, pub ed25519.PublicKey) {
	v.report.Checkpoints++
	v.report.LastCheckpointSeq = seq
	for _, k := range v.report.CheckpointKeys {
		if k.PublicKey.Equal(pub) {
			return
		}
	}
	v.report.CheckpointKeys = append(v.report.CheckpointKeys, CheckpointKey{ID: CheckpointKeyID(pub), PublicKey: pub, FirstSeq: seq})
}

func (v *ChainVerifier) fail(seq int64, problem string) bool {
	v.done = true
	v.report.OK = false
	v.report.FirstBadSeq = seq
	v.report.Problem = problem
	return false
}

// CheckHead compares the verified records with a head the driver stored
// separately (for example a chain_heads row written in the same transaction
// as the records). A stored head beyond the last record means records were
// deleted from the end of the chain.
func (v *ChainVerifier) CheckHead(h ChainHead) {
	if v.done {
		return
	}
	switch {
	case h.Seq > v.lastSeq:
		v.fail(v.lastSeq+1, fmt.Sprintf("%s: the chain head is record %d but the last record is %d", ProblemTruncated, h.Seq, v.lastSeq))
	case h.Seq < v.lastSeq:
		v.fail(h.Seq+1, fmt.Sprintf("%s: the chain head is record %d but records continue to %d", ProblemSequenceGap, h.Seq, v.lastSeq))
	case h.Seq > 0 && !bytes.Equal(h.Hash, v.last):
		v.fail(h.Seq, fmt.Sprintf("%s: record %d has hash %s, the chain head says %s", ProblemHashMismatch, h.Seq, shortHex(v.last), shortHex(h.Hash)))
	}
}

// Report returns the result so far: OK if every record fed checked out and
// no anchor lies beyond the last of them.
func (v *ChainVerifier) Report() VerifyReport {
	rep := v.report
	if v.done {
		return rep
	}
	var missing int64
	for seq := range v.anchors {
		if seq > v.lastSeq && (missing == 0 || seq < missing) {
			missing = seq
		}
	}
	if missing > 0 {
		rep.OK = false
		rep.FirstBadSeq = v.lastSeq + 1
		rep.Problem = fmt.Sprintf("%s: record %d is anchored outside the database, but the chain ends at record %d", ProblemTruncated, missing, v.lastSeq)
	}
	return rep
}

// VerifyChain checks recs, which must be one chain's records in Seq order,
// continuing from start (the zero ChainHead for a whole chain).
func VerifyChain(chain string, recs []*AuditRecord, start ChainHead) VerifyReport {
	v := NewChainVerifier(chain, start)
	for _, r := range recs {
		if !v.Add(r) {
			break
		}
	}
	return v.Report()
}

func shortHex(b []byte) string {
	if len(b) == 0 {
		return "(empty)"
	}
	if len(b) > 8 {
		return hex.EncodeToString(b[:8]) + "…"
	}
	return hex.EncodeToString(b)
}

// DecodeRecordEncoding parses a canonical encoding made by
// AppendRecordEncoding back into a record (Hash is not part of it and stays
// nil). It accepts exactly what AppendRecordEncoding produces: the magic, then
// known tags in increasing order with well-formed lengths, so a damaged
// encoding is an error wrapping ErrInvalid rather than a different record.
// Drivers that store records in this form verify them by hashing the stored
// bytes and compare with the stored hash; a record that decodes but was
// altered still fails that comparison.
func DecodeRecordEncoding(b []byte) (*AuditRecord, error) {
	bad := func(format string, args ...any) (*AuditRecord, error) {
		return nil, fmt.Errorf("decode audit record: "+format+": %w", append(args, ErrInvalid)...)
	}
	if !bytes.HasPrefix(b, []byte(recordEncodingMagic)) {
		return bad("missing format marker")
	}
	b = b[len(recordEncodingMagic):]
	r := &AuditRecord{}
	var last uint64
	for len(b) > 0 {
		tag, n := binary.Uvarint(b)
		if n <= 0 {
			return bad("malformed field tag")
		}
		b = b[n:]
		size, n := binary.Uvarint(b)
		if n <= 0 || size > uint64(len(b)-n) {
			return bad("field %d: malformed or overlong length", tag)
		}
		v := b[n : n+int(size)]
		b = b[n+int(size):]
		if tag <= last {
			return bad("field %d out of order", tag)
		}
		last = tag
		fixed := func() (int64, bool) {
			if len(v) != 8 {
				return 0, false
			}
			return int64(binary.BigEndian.Uint64(v)), true
		}
		switch tag {
		case tagChain:
			r.Chain = string(v)
		case tagID:
			r.ID = string(v)
		case tagEvent:
			r.Event = RecordEvent(v)
		case tagAgentOrg:
			r.Agent.Org = string(v)
		case tagAgentTeam:
			r.Agent.Team = string(v)
		case tagAgentName:
			r.Agent.Agent = string(v)
		case tagSessionID:
			r.SessionID = string(v)
		case tagTraceID:
			r.TraceID = string(v)
		case tagSpanID:
			r.SpanID = string(v)
		case tagPayload:
			r.Payload = bytes.Clone(v)
		case tagRuleID:
			r.RuleID = string(v)
		case tagPolicyVersion:
			r.PolicyVersion = string(v)
		case tagReason:
			r.Reason = string(v)
		case tagPrevHash:
			r.PrevHash = bytes.Clone(v)
		case tagSeq, tagTime, tagKind, tagDecision, tagMode, tagShadowDecision, tagLatency:
			x, ok := fixed()
			if !ok {
				return bad("field %d: want 8 bytes, have %d", tag, len(v))
			}
			switch tag {
			case tagSeq:
				r.Seq = x
			case tagTime:
				r.Time = FromUnixNanos(x)
			case tagKind:
				r.Kind = action.Kind(x)
			case tagDecision:
				r.Decision = action.Decision(x)
			case tagMode:
				r.Mode = action.Mode(x)
			case tagShadowDecision:
				r.ShadowDecision = action.Decision(x)
			case tagLatency:
				r.Latency = time.Duration(x)
			}
		default:
			return bad("unknown field %d", tag)
		}
	}
	return r, nil
}

// Unreadable records that the record at seq could not be read back at all
// (its stored form is damaged), which ends verification like any other
// problem.
func (v *ChainVerifier) Unreadable(seq int64, err error) {
	if v.done {
		return
	}
	v.fail(seq, fmt.Sprintf("%s: record %d cannot be read: %v", ProblemHashMismatch, seq, err))
}
