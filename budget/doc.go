// Package budget meters LLM spend against the policy's daily and monthly USD budgets.
//
// Money is integer micro-USD (MicroUSD) everywhere, so counters shared by
// several gateway replicas stay exact. A Pricing table (embedded list
// prices, optionally overridden by an operator file) turns a model and token
// counts into a cost; a Meter reserves the estimated cost of a call against
// every budget tier that applies to the agent (agent, team, org; daily and
// monthly windows in each budget's time zone) all or nothing, and Reconcile
// corrects every tier by the difference once the actual token counts are
// known. Status reads spend for the budgets API.
package budget
