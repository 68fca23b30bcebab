package gateway

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/scan"
)

// maxViews bounds the per-agent settings cached for one policy version.
const maxViews = 100000

// agentView is what the decision path needs from the non-decision sections
// of the policy for one agent: computed once per agent and policy version.
type agentView struct {
	settings policy.Settings
	scanner  *scan.Scanner
	// credential is what to do with findings (alert_and_redact when no
	// enforce document has a data section).
	credential scan.Action
	err        error
}

// views caches agentViews for one snapshot; SetSnapshot replaces it.
type views struct {
	snap     *policy.Snapshot
	m        sync.Map // action.AgentID -> *agentView
	n        atomic.Int64
	mu       sync.Mutex
	scanners map[string]*scan.Scanner // by custom pattern set
}

func newViews(s *policy.Snapshot) *views {
	return &views{snap: s, scanners: map[string]*scan.Scanner{}}
}

// get returns the view of agent, building it on first use.
func (v *views) get(agent action.AgentID) *agentView {
	if av, ok := v.m.Load(agent); ok {
		return av.(*agentView)
	}
	av := v.build(agent)
	if v.n.Load() < maxViews {
		if _, loaded := v.m.LoadOrStore(agent, av); !loaded {
			v.n.Add(1)
		}
	}
	return av
}

func (v *views) build(agent action.AgentID) *agentView {
	av := &agentView{settings: v.snap.Settings(agent), credential: scan.AlertAndRedact}
	if ca := av.settings.CredentialAction; ca != "" {
		a, err := scan.ParseAction(string(ca))
		if err != nil {
			av.err = fmt.Errorf("data.credential_action: %w", err)
			a = scan.Block
		}
		av.credential = a
	}
	av.scanner, av.err = v.scanner(av.settings.SensitivePatterns)
	return av
}

// scanner returns a scanner for the built-in kinds plus the custom patterns,
// shared by every agent with the same pattern set.
func (v *views) scanner(pats []policy.SensitivePattern) (*scan.Scanner, error) {
	var key strings.Builder
	custom := make([]scan.Pattern, len(pats))
	for i, p := range pats {
		custom[i] = scan.Pattern{Name: p.Name, Regex: p.Regex.String()}
		key.WriteString(p.Name + "\x00" + p.Regex.String() + "\x00")
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if sc, ok := v.scanners[key.String()]; ok {
		return sc, nil
	}
	sc, err := scan.New(scan.Options{Custom: custom})
	if err != nil {
		return nil, fmt.Errorf("build credential scanner: %w", err)
	}
	v.scanners[key.String()] = sc
	return sc, nil
}

// ValidateScanPatterns checks that every document's data.sensitive_patterns
// can be compiled into a scanner (for example, that no name shadows a
// built-in kind), so such a policy is rejected at load, not at check time.
func ValidateScanPatterns(s *policy.Snapshot) error {
	var errs []string
	for _, d := range s.Documents() {
		if d.Spec.Data == nil || len(d.Spec.Data.SensitivePatterns) == 0 {
			continue
		}
		for i, p := range d.Spec.Data.SensitivePatterns {
			if _, err := scan.New(scan.Options{Custom: []scan.Pattern{{Name: p.Name, Regex: p.Regex.String()}}}); err != nil {
				errs = append(errs, fmt.Sprintf("%s: spec.data.sensitive_patterns[%d].name: %v", d.Source, i, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return nil
}

// viewsFor returns the per-agent views of snap: the cached ones, or fresh
// ones when the policy changed between loading snap and its views.
func (c *Core) viewsFor(snap *policy.Snapshot) *views {
	if v := c.views.Load(); v != nil && v.snap == snap {
		return v
	}
	return newViews(snap)
}

// Settings returns the non-decision policy sections that apply to agent under
// the active policy, computed once per agent and policy version. The result
// is shared: callers must not modify it.
func (c *Core) Settings(agent action.AgentID) policy.Settings {
	snap := c.snap.Load()
	if snap == nil {
		return policy.Settings{}
	}
	v := c.viewsFor(snap)
	return v.get(agent).settings
}
