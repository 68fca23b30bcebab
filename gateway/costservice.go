package gateway

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/storage"
)

// CostReader is what CostService needs from the store.
type CostReader interface {
	QueryCosts(ctx context.Context, q storage.CostQuery) ([]storage.CostEntry, error)
}

// Cost query bounds.
const (
	// DefaultCostDays is the range GetCosts covers when no day is given.
	DefaultCostDays = 30
	// MaxCostDays is the longest range one GetCosts call may cover.
	MaxCostDays = 400
)

// CostGroupings are the dimensions GetCosts can group by.
var CostGroupings = []string{"org", "team", "agent", "model", "day"}

// CostService implements agentassembly.v1.CostService.
type CostService struct {
	v1.UnimplementedCostServiceServer
	store CostReader
	now   func() time.Time
}

var _ v1.CostServiceServer = (*CostService)(nil)

// NewCostService returns the service over the cost ledger.
func NewCostService(store CostReader) *CostService {
	return &CostService{store: store, now: time.Now}
}

// costKey is the grouping key of one CostGroup.
type costKey struct{ org, team, agent, model, day string }

// GetCosts implements CostService.GetCosts.
func (s *CostService) GetCosts(ctx context.Context, req *v1.GetCostsRequest) (*v1.GetCostsResponse, error) {
	by := map[string]bool{}
	for _, g := range req.GetGroupBy() {
		for _, part := range strings.Split(g, ",") { // REST: group_by=team,day
			part = strings.TrimSpace(part)
			if !slices.Contains(CostGroupings, part) {
				return nil, requestStatus(badField("group_by", "%q is not a grouping: want one or more of %s", part, strings.Join(CostGroupings, ", ")))
			}
			by[part] = true
		}
	}
	today := s.now().UTC()
	from, to := req.GetFromDay(), req.GetToDay()
	if to == "" {
		to = today.Format(time.DateOnly)
	}
	toT, err := time.Parse(time.DateOnly, to)
	if err != nil {
		return nil, requestStatus(badField("to_day", "%q is not a day: want YYYY-MM-DD", to))
	}
	if from == "" {
		from = toT.AddDate(0, 0, -(DefaultCostDays - 1)).Format(time.DateOnly)
	}
	fromT, err := time.Parse(time.DateOnly, from)
	if err != nil {
		return nil, requestStatus(badField("from_day", "%q is not a day: want YYYY-MM-DD", from))
	}
	switch days := int(toT.Sub(fromT).Hours()/24) + 1; {
	case days < 1:
		return nil, requestStatus(badField("from_day", "%s is after to_day %s", from, to))
	case days > MaxCostDays:
		return nil, requestStatus(badField("from_day", "the range %s..%s covers %d days, more than %d: ask for less", from, to, days, MaxCostDays))
	}
	rows, err := s.store.QueryCosts(ctx, storage.CostQuery{Org: req.GetOrgId(), Team: req.GetTeamId(), Agent: req.GetAgentId(),
		Model: req.GetModel(), FromDay: from, ToDay: to})
	if err != nil {
		if errors.Is(err, storage.ErrInvalid) {
			return nil, requestStatus(badField("from_day", "%v", err))
		}
		return nil, storeStatus("read costs", err)
	}
	groups := map[costKey]*v1.CostGroup{}
	total := &v1.CostGroup{}
	for _, r := range rows {
		var k costKey
		if by["org"] || by["team"] || by["agent"] {
			k.org = r.Agent.Org
		}
		if by["team"] || by["agent"] {
			k.team = r.Agent.Team
		}
		if by["agent"] {
			k.agent = r.Agent.Agent
		}
		if by["model"] {
			k.model = r.Model
		}
		if by["day"] {
			k.day = r.Day
		}
		g := groups[k]
		if g == nil && len(by) > 0 {
			g = &v1.CostGroup{OrgId: k.org, TeamId: k.team, AgentId: k.agent, Model: k.model, Day: k.day}
			groups[k] = g
		}
		for _, acc := range []*v1.CostGroup{g, total} {
			if acc == nil {
				continue
			}
			acc.CostMicroUsd += r.MicroUSD
			acc.PromptTokens += r.PromptTokens
			acc.CompletionTokens += r.CompletionTokens
			acc.Requests += r.Requests
		}
	}
	resp := &v1.GetCostsResponse{Total: total, FromDay: from, ToDay: to}
	for _, g := range groups {
		resp.Groups = append(resp.Groups, g)
	}
	slices.SortFunc(resp.Groups, func(a, b *v1.CostGroup) int {
		return cmp.Or(strings.Compare(a.Day, b.Day), strings.Compare(a.OrgId, b.OrgId), strings.Compare(a.TeamId, b.TeamId),
			strings.Compare(a.AgentId, b.AgentId), strings.Compare(a.Model, b.Model))
	})
	for _, g := range append(resp.Groups, total) {
		g.CostUsd = budget.MicroUSD(g.CostMicroUsd).USD()
	}
	return resp, nil
}
