package alerts

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/agent-assembly/agent-assembly/storage"
)

// Alert kinds.
const (
	// KindBudgetThreshold is a budget window crossing 80% or 95% of its limit.
	KindBudgetThreshold = "budget_threshold"
	// KindBudgetExhausted is an LLM call denied because a budget is spent.
	KindBudgetExhausted = "budget_exhausted"
	// KindPolicyViolation is an action the policy denied.
	KindPolicyViolation = "policy_violation"
	// KindCredentialLeak is an action that carried a credential, blocked
	// (critical) or redacted (warning).
	KindCredentialLeak = "credential_leak"
	// KindAgentSuspended is an agent suspended or killed, by an operator or
	// by a budget.
	KindAgentSuspended = "agent_suspended"
	// KindXDSNack is an Envoy or gRPC node rejecting its configuration.
	KindXDSNack = "xds_nack"
	// KindEBPFDrops is a runtime reporting kernel events lost from its ring buffer.
	KindEBPFDrops = "ebpf_drops"
	// KindAuditChainBreak is an audit chain that failed verification.
	KindAuditChainBreak = "audit_chain_break"
)

// Kinds lists every alert kind.
var Kinds = []string{KindBudgetThreshold, KindBudgetExhausted, KindPolicyViolation, KindCredentialLeak,
	KindAgentSuspended, KindXDSNack, KindEBPFDrops, KindAuditChainBreak}

// ValidKind reports whether k is one of Kinds.
func ValidKind(k string) bool {
	for _, v := range Kinds {
		if v == k {
			return true
		}
	}
	return false
}

// ParseSeverity checks a severity name; empty is allowed and means any.
func ParseSeverity(s string) (storage.AlertSeverity, error) {
	sev := storage.AlertSeverity(s)
	if s != "" && sev.Rank() == 0 {
		return "", fmt.Errorf("parse severity %q: want info, warning or critical", s)
	}
	return sev, nil
}

// ID derives an alert id from the kind and the parts that name its source
// event, so every replica raising the same event computes the same id.
func ID(kind string, parts ...string) string {
	h := sha256.New()
	h.Write([]byte(kind))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return kind + "-" + hex.EncodeToString(h.Sum(nil)[:12])
}
