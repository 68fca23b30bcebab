package auth

import "strings"

const v1 = "/agentassembly.v1."

// MethodPprof names the runtime profiles the gateway serves over HTTP when
// --debug-pprof is on (not a gRPC method): admin only, as they show
// memory contents such as goroutine stacks.
const MethodPprof = "/agentassembly.debug/Pprof"

// methods classifies every gRPC method the gateway serves by its full name.
// A method that is not here, and matches no prefix in prefixes, is refused.
var methods = map[string]Class{
	// Agents: the decision path, lifecycle and the streams runtimes hold.
	v1 + "PolicyService/CheckAction":                       ClassAgent,
	v1 + "PolicyService/BatchCheck":                        ClassAgent,
	v1 + "PolicyService/RecordUsage":                       ClassAgent,
	v1 + "PolicyService/GetAgentPolicy":                    ClassAgent,
	v1 + "SecretsService/DispatchTool":                     ClassAgent,
	v1 + "AgentLifecycleService/RequestChallenge":          ClassAgent,
	v1 + "AgentLifecycleService/Register":                  ClassAgent,
	v1 + "AgentLifecycleService/Heartbeat":                 ClassAgent,
	v1 + "AgentLifecycleService/Deregister":                ClassAgent,
	v1 + "AgentLifecycleService/ControlStream":             ClassAgent,
	v1 + "ApprovalService/WaitApproval":                    ClassAgent,
	v1 + "InvalidationService/Subscribe":                   ClassAgent,
	v1 + "AuditService/ReportEvents":                       ClassAgent,
	"/envoy.service.auth.v3.Authorization/Check":           ClassAgent,
	"/envoy.service.ext_proc.v3.ExternalProcessor/Process": ClassAgent,

	// Viewers: read-only.
	v1 + "AdminService/GetStatus":           ClassViewer,
	v1 + "AgentLifecycleService/ListAgents": ClassViewer,
	v1 + "AgentLifecycleService/GetAgent":   ClassViewer,
	v1 + "AuditService/ListAuditRecords":    ClassViewer,
	v1 + "AuditService/GetTrace":            ClassViewer,
	v1 + "AuditService/TailAudit":           ClassViewer,
	v1 + "AuditService/VerifyAudit":         ClassViewer,
	v1 + "PolicyService/ExplainAction":      ClassViewer,
	v1 + "PolicyService/GetBudget":          ClassViewer,
	v1 + "PolicyService/ValidatePolicy":     ClassViewer,
	v1 + "PolicyService/GetPolicy":          ClassViewer,
	v1 + "PolicyService/ListPolicyVersions": ClassViewer,
	v1 + "PolicyService/SimulatePolicy":     ClassViewer,
	v1 + "TopologyService/GetTopology":      ClassViewer,
	v1 + "ApprovalService/ListPending":      ClassViewer,
	v1 + "ApprovalService/GetApproval":      ClassViewer,
	v1 + "ApprovalService/WatchApprovals":   ClassViewer,
	v1 + "SecretsService/ListSecrets":       ClassViewer,
	v1 + "XdsService/GetXdsStatus":          ClassViewer,
	v1 + "AlertService/ListAlerts":          ClassViewer,
	v1 + "AlertService/WatchAlerts":         ClassViewer,
	v1 + "AlertService/ListSilences":        ClassViewer,
	v1 + "CostService/GetCosts":             ClassViewer,

	// Operators: approvals, agent control, silences.
	v1 + "ApprovalService/Decide":             ClassOperator,
	v1 + "AgentLifecycleService/SuspendAgent": ClassOperator,
	v1 + "AgentLifecycleService/ResumeAgent":  ClassOperator,
	v1 + "AgentLifecycleService/KillAgent":    ClassOperator,
	v1 + "AgentLifecycleService/SetAgentMode": ClassOperator,
	v1 + "AlertService/CreateSilence":         ClassOperator,
	v1 + "AlertService/DeleteSilence":         ClassOperator,

	// Admins: policies, secrets, keys.
	MethodPprof:                         ClassAdmin,
	v1 + "PolicyService/ApplyPolicy":    ClassAdmin,
	v1 + "PolicyService/RollbackPolicy": ClassAdmin,
	v1 + "SecretsService/PutSecret":     ClassAdmin,
	v1 + "SecretsService/DeleteSecret":  ClassAdmin,
	v1 + "AdminService/CreateApiKey":    ClassAdmin,
	v1 + "AdminService/RotateApiKey":    ClassAdmin,
	v1 + "AdminService/RevokeApiKey":    ClassAdmin,
	v1 + "AdminService/ListApiKeys":     ClassAdmin,
	v1 + "AdminService/RotateTokenKey":  ClassAdmin,
}

// prefixes classifies whole services: health and reflection are public, and
// every Envoy discovery service (ADS and the per-type ones go-control-plane
// may register) is for agents' sidecars.
var prefixes = []struct {
	prefix string
	class  Class
}{
	{"/grpc.health.v1.Health/", ClassPublic},
	{"/grpc.reflection.", ClassPublic},
	{"/envoy.service.discovery.v3.", ClassAgent},
	{"/envoy.service.listener.v3.", ClassAgent},
	{"/envoy.service.route.v3.", ClassAgent},
	{"/envoy.service.cluster.v3.", ClassAgent},
	{"/envoy.service.endpoint.v3.", ClassAgent},
	{"/envoy.service.secret.v3.", ClassAgent},
	{"/envoy.service.runtime.v3.", ClassAgent},
	{"/envoy.service.extension.v3.", ClassAgent},
}

// Classify returns the class of a full gRPC method name
// ("/package.Service/Method"), ClassUnknown when the table does not know it.
func Classify(fullMethod string) Class {
	if c, ok := methods[fullMethod]; ok {
		return c
	}
	for _, p := range prefixes {
		if strings.HasPrefix(fullMethod, p.prefix) {
			return p.class
		}
	}
	return ClassUnknown
}
