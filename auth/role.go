package auth

import "fmt"

// Role is an operator's role. Roles are ordered: an admin may do what an
// operator may, and an operator what a viewer may.
type Role int

// Roles, lowest first. RoleNone is no role at all.
const (
	RoleNone Role = iota
	RoleViewer
	RoleOperator
	RoleAdmin
)

// Roles lists the assignable roles, lowest first.
var Roles = []Role{RoleViewer, RoleOperator, RoleAdmin}

// String returns the role's name.
func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// ParseRole reads viewer, operator or admin.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if r.String() == s {
			return r, nil
		}
	}
	return RoleNone, fmt.Errorf("role must be viewer, operator or admin, not %q", s)
}

// Class says who may call a method.
type Class int

// Method classes. ClassUnknown is refused: a method missing from the table
// is never served.
const (
	ClassUnknown Class = iota
	// ClassPublic needs no credential (health, reflection).
	ClassPublic
	// ClassAgent is for agents; their credential is checked by the agent
	// authenticator, and operator keys are never accepted.
	ClassAgent
	// ClassViewer, ClassOperator and ClassAdmin need an operator credential
	// with at least that role.
	ClassViewer
	ClassOperator
	ClassAdmin
)

// String returns the class's name.
func (c Class) String() string {
	switch c {
	case ClassPublic:
		return "public"
	case ClassAgent:
		return "agent"
	case ClassViewer:
		return "viewer"
	case ClassOperator:
		return "operator"
	case ClassAdmin:
		return "admin"
	}
	return "unknown"
}

// Required returns the lowest role that may call a method of class c, or
// RoleNone for classes that take no operator role.
func (c Class) Required() Role {
	switch c {
	case ClassViewer:
		return RoleViewer
	case ClassOperator:
		return RoleOperator
	case ClassAdmin:
		return RoleAdmin
	}
	return RoleNone
}
