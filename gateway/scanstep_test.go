package gateway

import (
	"context"
	"strings"
	"testing"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/policy"
)

// fakeAWSKey is assembled at run time so no file holds a key-shaped string.
var fakeAWSKey = "AKIA" + strings.Repeat("Q", 8) + "EXAMPLE7"

func coreWith(t *testing.T, rec *recorder, credentialAction string) *Core {
	t.Helper()
	doc, err := policy.Parse("t.yaml", []byte(`apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: eng}
spec:
  scope: {level: team, org: acme, team: eng}
  default: allow
  data:
    credential_action: `+credentialAction+`
    sensitive_patterns:
      - {name: acme_customer_id, regex: "ACME-[0-9]{6}"}
`))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := policy.Compile([]*policy.Document{doc}, "v1")
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCore(Options{Audit: rec})
	if err != nil {
		t.Fatal(err)
	}
	c.SetSnapshot(snap)
	return c
}

func TestCredentialActions(t *testing.T) {
	args := `{"cmd":"deploy","aws_key":"` + fakeAWSKey + `","customer":"ACME-123456"}`
	cases := []struct {
		action     string
		decision   v1.Decision
		redactions int
	}{
		{"block", v1.Decision_DENY, 0},
		{"redact_only", v1.Decision_REDACT, 2},
		{"alert_and_redact", v1.Decision_REDACT, 2},
		{"alert_only", v1.Decision_ALLOW, 0},
	}
	for _, tc := range cases {
		t.Run(tc.action, func(t *testing.T) {
			rec := &recorder{}
			c := coreWith(t, rec, tc.action)
			resp, err := c.Check(context.Background(), coderTool("deploy", args))
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetDecision() != tc.decision || len(resp.GetRedactions()) != tc.redactions {
				t.Fatalf("decision %s with %d redactions (%s), want %s with %d", resp.GetDecision(), len(resp.GetRedactions()), resp.GetReason(), tc.decision, tc.redactions)
			}
			for _, r := range resp.GetRedactions() {
				if r.GetPath() == "" || !strings.HasPrefix(r.GetReplacement(), "[REDACTED:") {
					t.Fatalf("redaction without path or replacement: %v", r)
				}
			}
			if tc.action == "block" && !strings.Contains(resp.GetReason(), "aws_access_key_id") {
				t.Fatalf("block reason does not name the kind: %s", resp.GetReason())
			}
			// Whatever the action, the raw values never reach the audit log.
			p := string(rec.last(t).Payload)
			if strings.Contains(p, fakeAWSKey) || strings.Contains(p, "ACME-123456") || !strings.Contains(p, "[REDACTED:") {
				t.Fatalf("audit payload not redacted: %s", p)
			}
			if strings.Contains(resp.GetReason(), fakeAWSKey) {
				t.Fatal("reason leaks the secret")
			}
		})
	}
}

func TestPromptScannedNeverStored(t *testing.T) {
	rec := &recorder{}
	c := coreWith(t, rec, "block")
	req := &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"},
		Context: &v1.CheckActionRequest_LlmCall{LlmCall: &v1.LlmCallContext{Provider: "openai", Model: "gpt-4o", Prompt: "use key " + fakeAWSKey}}}
	resp, err := c.Check(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "llm_call.prompt") {
		t.Fatalf("prompt with a key: %v", resp)
	}
	if p := string(rec.last(t).Payload); strings.Contains(p, "use key") {
		t.Fatalf("prompt stored in audit: %s", p)
	}
}

func TestPolicyDenyStandsOverScan(t *testing.T) {
	rec := &recorder{}
	c := newTestCore(t, rec) // examples: coder-1 may not call kubectl
	resp, err := c.Check(context.Background(), coderTool("kubectl", `{"token":"`+fakeAWSKey+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDecision() != v1.Decision_DENY || resp.GetPolicyRuleId() != "coding-agent/tools[*]" {
		t.Fatalf("policy deny replaced by the scanner: %v", resp)
	}
	if strings.Contains(string(rec.last(t).Payload), fakeAWSKey) {
		t.Fatal("denied action stored unredacted")
	}
}

func TestScanPatternShadowingBuiltinRejected(t *testing.T) {
	doc, err := policy.Parse("x.yaml", []byte(`apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: x}
spec:
  scope: {level: global}
  data:
    sensitive_patterns:
      - {name: jwt, regex: "x+"}
`))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := policy.Compile([]*policy.Document{doc}, "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := ValidateScanPatterns(snap); err == nil || !strings.Contains(err.Error(), "x.yaml: spec.data.sensitive_patterns[0].name") {
		t.Fatalf("want an error naming the pattern, got %v", err)
	}
}
