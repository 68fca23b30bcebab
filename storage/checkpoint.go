package storage

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
)

// CheckpointRule is the RuleID of a signed checkpoint: a governance record
// whose payload is a signature, by a key the database does not hold, over the
// chain position it follows (the previous record's Seq and Hash) and its own
// time. A hash chain alone does not stop someone who can rewrite the whole
// database (every record and the head) from forging a consistent chain;
// checkpoints do, as long as the signing key stays out of their reach. Every
// record up to a valid checkpoint is then vouched for, because the signed
// hash covers the whole chain before it.
const CheckpointRule = "audit-checkpoint"

// checkpointMagic starts the signed message, naming its format.
const checkpointMagic = "agent-assembly/audit-checkpoint/v1\n"

// Problems ChainVerifier reports for checkpoints, at the start of
// VerifyReport.Problem.
const (
	ProblemCheckpoint = "signed checkpoint does not verify"
)

// checkpointPayload is a checkpoint record's payload.
type checkpointPayload struct {
	// SignedSeq and SignedHash are the head the checkpoint follows.
	SignedSeq  int64  `json:"signed_seq"`
	SignedHash string `json:"signed_hash"` // hex
	KeyID      string `json:"key_id"`
	PublicKey  string `json:"public_key"` // base64
	Signature  string `json:"signature"`  // base64
}

// CheckpointKey is a key that signed checkpoints of a chain.
type CheckpointKey struct {
	// ID is CheckpointKeyID of PublicKey.
	ID        string
	PublicKey ed25519.PublicKey
	// FirstSeq is the first checkpoint record the key signed.
	FirstSeq int64
}

// CheckpointKeyID names a checkpoint signing key: the first 8 bytes of the
// SHA-256 of the public key, in hex.
func CheckpointKeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// CheckpointSigner makes signed checkpoint records with one Ed25519 key.
type CheckpointSigner struct {
	key ed25519.PrivateKey
	pub ed25519.PublicKey
	id  string
}

// NewCheckpointSigner returns a signer for the 32-byte Ed25519 seed.
func NewCheckpointSigner(seed []byte) (*CheckpointSigner, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("checkpoint signing key seed is %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	key := ed25519.NewKeyFromSeed(seed)
	pub := key.Public().(ed25519.PublicKey)
	return &CheckpointSigner{key: key, pub: pub, id: CheckpointKeyID(pub)}, nil
}

// KeyID is CheckpointKeyID of the signer's public key.
func (s *CheckpointSigner) KeyID() string { return s.id }

// PublicKey returns the key that verifies the signer's checkpoints.
func (s *CheckpointSigner) PublicKey() ed25519.PublicKey { return bytes.Clone(s.pub) }

// Record returns a checkpoint record for chain, with id and time t. Its
// payload is signed when the driver links it (AuditRecord.Seal), over the
// head it then follows, so the record vouches for every record before it.
func (s *CheckpointSigner) Record(chain, id string, t time.Time) *AuditRecord {
	return &AuditRecord{
		Chain: chain, ID: id, Time: t, Event: EventGovernance, Decision: action.Allow,
		RuleID: CheckpointRule, Mode: action.ModeEnforce,
		Reason: "signed checkpoint of the audit chain: vouches for every record before it",
		Seal: func(prev ChainHead) []byte {
			sig := ed25519.Sign(s.key, checkpointMessage(chain, prev.Seq, prev.Hash, t))
			p, _ := json.Marshal(checkpointPayload{
				SignedSeq: prev.Seq, SignedHash: hex.EncodeToString(prev.Hash), KeyID: s.id,
				PublicKey: base64.StdEncoding.EncodeToString(s.pub), Signature: base64.StdEncoding.EncodeToString(sig),
			})
			return p
		},
	}
}

// checkpointMessage is what a checkpoint signs: the chain, the head it
// follows and its own time, length-prefixed.
func checkpointMessage(chain string, seq int64, hash []byte, t time.Time) []byte {
	m := make([]byte, 0, len(checkpointMagic)+len(chain)+64)
	m = append(m, checkpointMagic...)
	m = binary.BigEndian.AppendUint32(m, uint32(len(chain)))
	m = append(m, chain...)
	m = binary.BigEndian.AppendUint64(m, uint64(seq))
	m = binary.BigEndian.AppendUint32(m, uint32(len(hash)))
	m = append(m, hash...)
	return binary.BigEndian.AppendUint64(m, uint64(t.UnixNano()))
}

// IsCheckpoint reports whether r is a checkpoint record.
func IsCheckpoint(r *AuditRecord) bool {
	return r.Event == EventGovernance && r.RuleID == CheckpointRule
}

// verifyCheckpoint checks checkpoint record r, already linked after the
// record before it (so r.PrevHash is that record's hash): its payload must
// name that head and its signature verify with the public key it carries.
// Whether that key is trusted is for the caller to decide
// (VerifyReport.CheckpointKeys).
func verifyCheckpoint(r *AuditRecord) (ed25519.PublicKey, error) {
	var p checkpointPayload
	if err := json.Unmarshal(r.Payload, &p); err != nil {
		return nil, fmt.Errorf("payload is not a checkpoint: %v", err)
	}
	hash, err := hex.DecodeString(p.SignedHash)
	if err != nil {
		return nil, fmt.Errorf("signed_hash is not hex")
	}
	if p.SignedSeq != r.Seq-1 || !bytes.Equal(hash, r.PrevHash) {
		return nil, fmt.Errorf("it signs record %d with hash %s, but follows record %d with hash %s", p.SignedSeq, shortHex(hash), r.Seq-1, shortHex(r.PrevHash))
	}
	pub, err := base64.StdEncoding.DecodeString(p.PublicKey)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public_key is not an Ed25519 key")
	}
	if id := CheckpointKeyID(pub); id != p.KeyID {
		return nil, fmt.Errorf("key_id %q does not name its public key (%s)", p.KeyID, id)
	}
	sig, err := base64.StdEncoding.DecodeString(p.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("signature is not an Ed25519 signature")
	}
	if !ed25519.Verify(pub, checkpointMessage(r.Chain, p.SignedSeq, hash, r.Time), sig) {
		return nil, fmt.Errorf("the signature by key %s does not match the record", p.KeyID)
	}
	return pub, nil
}

// TrustCheckpointKeys fails the report at the first checkpoint signed by a
// key other than trusted (one a forger could have used to re-sign a rewritten
// chain), unless the report names an earlier problem already.
func (r *VerifyReport) TrustCheckpointKeys(trusted ...ed25519.PublicKey) {
	for _, k := range r.CheckpointKeys { // in order of first use
		if slices.ContainsFunc(trusted, func(t ed25519.PublicKey) bool { return t.Equal(k.PublicKey) }) {
			continue
		}
		if r.OK || k.FirstSeq < r.FirstBadSeq {
			r.OK = false
			r.FirstBadSeq = k.FirstSeq
			r.Problem = fmt.Sprintf("%s: record %d is signed by key %s, which is not this gateway's checkpoint key", ProblemCheckpoint, k.FirstSeq, k.ID)
		}
		return
	}
}
