package deploy

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/policy"
)

// probeKey is a field name no policy section accepts.
const probeKey = "zz_probe"

// policyProbes place an unknown field (probeKey) or an invalid value
// ("zz_probe") at one place of a policy document each; the parser's error
// then lists what that place accepts ("valid fields: …" or "valid: …").
// Every mapping and every enumeration the parser reads has a probe here; a
// new spec section shows up in the probe of spec itself.
var policyProbes = []struct{ where, spec string }{
	{"spec", "zz_probe: 1"},
	{"spec.scope", "scope: {level: global, zz_probe: 1}"},
	{"spec.scope.level", "scope: {level: zz_probe}"},
	{"spec.enforcement_mode", "enforcement_mode: zz_probe"},
	{"spec.default", "default: zz_probe"},
	{"spec.unattributed", "unattributed: zz_probe"},
	{"spec.network", "network: {zz_probe: 1}"},
	{"spec.network.enforcement", "network: {enforcement: zz_probe}"},
	{"spec.network.allowlist[]", "network: {allowlist: [{host: a.example, zz_probe: 1}]}"},
	{"spec.network.allowlist[].inject", "network: {allowlist: [{host: a.example, inject: {header: X-A, value: b, zz_probe: 1}}]}"},
	{"spec.tools.<tool>", "tools: {t: {allow: true, zz_probe: 1}}"},
	{"spec.capabilities[]", "capabilities: [zz_probe]"},
	{"spec.filesystem", "filesystem: {zz_probe: 1}"},
	{"spec.process", "process: {zz_probe: 1}"},
	{"spec.llm", "llm: {zz_probe: 1}"},
	{"spec.schedule", "schedule: {zz_probe: 1}"},
	{"spec.schedule.active_hours[]", "schedule: {active_hours: [{start: \"08:00\", end: \"18:00\", zz_probe: 1}]}"},
	{"spec.schedule.active_hours[].days", "schedule: {active_hours: [{days: [zz_probe], start: \"08:00\", end: \"18:00\"}]}"},
	{"spec.budget", "budget: {daily_usd: 1, zz_probe: 1}"},
	{"spec.budget.per", "budget: {daily_usd: 1, per: zz_probe}"},
	{"spec.budget.action_on_exceed", "budget: {daily_usd: 1, action_on_exceed: zz_probe}"},
	{"spec.data", "data: {zz_probe: 1}"},
	{"spec.data.credential_action", "data: {credential_action: zz_probe}"},
	{"spec.data.sensitive_patterns[]", "data: {sensitive_patterns: [{name: a, regex: b, zz_probe: 1}]}"},
	{"spec.approval", "approval: {zz_probe: 1}"},
	{"spec.rules[]", "rules: [{id: a, decision: deny, zz_probe: 1}]"},
	{"spec.rules[].decision", "rules: [{id: a, decision: zz_probe}]"},
	{"spec.rules[].match", "rules: [{id: a, decision: deny, match: {zz_probe: 1}}]"},
	{"spec.rules[].match.action", "rules: [{id: a, decision: deny, match: {action: zz_probe}}]"},
}

var (
	validFieldsRe = regexp.MustCompile(`\(valid fields: ([^)]*)\)`)
	validValuesRe = regexp.MustCompile(`\(valid: ([^)]*)\)`)
)

// policyVocabulary asks the policy parser which fields and values each
// place of a document accepts: the map goes from "field" or "value" plus
// the place to the accepted names.
func policyVocabulary(t *testing.T) map[string][]string {
	t.Helper()
	// The document's top level and metadata.
	out := vocabularyOf(t, "document", "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: probe, zz_probe: 1}\nzz_probe: 1\nspec:\n  scope: {level: global}\n")
	for _, p := range policyProbes {
		doc := "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: probe}\nspec:\n"
		if !strings.HasPrefix(p.spec, "scope:") {
			doc += "  scope: {level: global}\n"
		}
		doc += "  " + p.spec + "\n"
		got := vocabularyOf(t, p.where, doc)
		if len(got) == 0 {
			t.Fatalf("probe %s: the parser's errors list no valid fields or values; did its message format change?", p.where)
		}
		for k, v := range got {
			out[k] = v
		}
	}
	return out
}

// vocabularyOf parses doc, which must fail, and collects the accepted
// fields and values its errors list, keyed by the error's field path.
func vocabularyOf(t *testing.T, where, doc string) map[string][]string {
	t.Helper()
	_, err := policy.Parse("probe.yaml", []byte(doc))
	var errs policy.Errors
	if !errors.As(err, &errs) {
		t.Fatalf("probe %s: want validation errors, got %v", where, err)
	}
	out := map[string][]string{}
	for _, e := range errs {
		if m := validFieldsRe.FindStringSubmatch(e.Msg); m != nil {
			where := strings.TrimSuffix(strings.TrimSuffix(e.Field, probeKey), ".")
			if where == "" {
				where = "document"
			}
			out["field "+where] = strings.Split(m[1], ", ")
		}
		if m := validValuesRe.FindStringSubmatch(e.Msg); m != nil {
			vals := strings.Split(strings.TrimSuffix(m[1], ", or *"), ", ")
			if strings.HasSuffix(m[1], ", or *") {
				vals = append(vals, "*")
			}
			out["value "+e.Field] = vals
		}
	}
	return out
}

// checkPolicyReference returns the fields and values the parser accepts
// that the reference page does not name. A field counts as named when the
// page writes it in backticks or as a YAML key (`name:`); a value, when the
// page writes it in backticks or in a YAML comment.
func checkPolicyReference(page string, vocab map[string][]string) errs {
	var e errs
	keys := make([]string, 0, len(vocab))
	for k := range vocab {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		kind, where, _ := strings.Cut(k, " ")
		for _, name := range vocab[k] {
			q := regexp.QuoteMeta(name)
			var re *regexp.Regexp
			if kind == "field" {
				re = regexp.MustCompile("`" + q + "`|(?m)(^|[\\s{,-])" + q + ":")
			} else {
				re = regexp.MustCompile("`" + q + "`|(?m)#[^\\n]*(^|[^\\w])" + q + "($|[^\\w])")
			}
			if !re.MatchString(page) {
				e.add("%s %q of %s is not in the policy reference", kind, name, where)
			}
		}
	}
	return e
}

// TestPolicyReferenceNamesEveryField checks docs/policy.md against the
// policy parser: every field of every section and every value of every
// enumeration the parser accepts is named on the page.
func TestPolicyReferenceNamesEveryField(t *testing.T) {
	vocab := policyVocabulary(t)
	n := 0
	for _, v := range vocab {
		n += len(v)
	}
	// Guard against a probe that stopped probing: the parser accepts far
	// more than this today.
	if n < 80 {
		t.Fatalf("the probes found only %d fields and values: %v", n, vocab)
	}
	page := string(read(t, filepath.Join(repoRoot(t), "docs", "policy.md")))
	checkPolicyReference(page, vocab).report(t, "docs/policy.md")
}

// TestPolicyReferenceCheckCatches shows the check fails when the page
// leaves out a field or a value.
func TestPolicyReferenceCheckCatches(t *testing.T) {
	vocab := policyVocabulary(t)
	page := string(read(t, filepath.Join(repoRoot(t), "docs", "policy.md")))
	for _, c := range []struct{ name, drop, want string }{
		{"field", "escalation_role", `field "escalation_role" of spec.approval`},
		{"value", "alert_and_redact", `value "alert_and_redact" of spec.data.credential_action`},
		{"section", "unattributed", `field "unattributed" of spec`},
	} {
		t.Run(c.name, func(t *testing.T) {
			bad := strings.ReplaceAll(page, c.drop, "zz_gone")
			if e := checkPolicyReference(bad, vocab); !e.contains(c.want) {
				t.Errorf("found %v, want a problem mentioning %q", e, c.want)
			}
		})
	}
	if e := checkPolicyReference(page, map[string][]string{"field spec": {"made_up_field"}}); !e.contains(fmt.Sprintf("%q", "made_up_field")) {
		t.Errorf("a field the page never names passed: %v", e)
	}
}
