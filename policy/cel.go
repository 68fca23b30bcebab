package policy

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
)

// celCostLimit bounds the work one condition may do per evaluation.
const celCostLimit = 100_000

var celEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("agent", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("action", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("args", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("now", cel.TimestampType),
	)
})

// clauseEnv compiles translated clause expressions: celEnv plus the
// clause variable (see clauseOperands).
var clauseEnv = sync.OnceValues(func() (*cel.Env, error) {
	env, err := celEnv()
	if err != nil {
		return nil, err
	}
	return env.Extend(cel.Variable(clauseVar, cel.MapType(cel.StringType, cel.DynType)))
})

// celCondition is a planned CEL program. clauses is set for translated
// clause expressions, which also read the clause variable.
type celCondition struct {
	prg     cel.Program
	clauses bool
}

// celError is a CEL expression that does not compile; syntax is set when
// it does not even parse.
type celError struct {
	msg    string
	syntax bool
}

func (e *celError) Error() string { return e.msg }

// compileCondition parses and type-checks a CEL expression, which must
// evaluate to bool, and plans it for evaluation.
func compileCondition(expr string) (condition, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, errors.New("empty CEL expression")
	}
	env, err := celEnv()
	if err != nil {
		return nil, fmt.Errorf("create CEL environment: %w", err)
	}
	c, err := compileCEL(env, expr)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func compileCEL(env *cel.Env, expr string) (celCondition, error) {
	ast, iss := env.Parse(expr)
	if iss != nil && iss.Err() != nil {
		return celCondition{}, &celError{msg: celIssue(iss), syntax: true}
	}
	ast, iss = env.Check(ast)
	if iss != nil && iss.Err() != nil {
		return celCondition{}, &celError{msg: celIssue(iss)}
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) {
		return celCondition{}, &celError{msg: fmt.Sprintf("CEL expression must evaluate to bool, not %s", t)}
	}
	prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize), cel.CostLimit(celCostLimit))
	if err != nil {
		return celCondition{}, fmt.Errorf("plan CEL expression: %w", err)
	}
	return celCondition{prg: prg}, nil
}

func celIssue(iss *cel.Issues) string {
	if errs := iss.Errors(); len(errs) > 0 {
		e := errs[0]
		if loc := e.Location; loc != nil && loc.Line() > 0 {
			return fmt.Sprintf("invalid CEL expression at %d:%d: %s", loc.Line(), loc.Column()+1, e.Message)
		}
		return "invalid CEL expression: " + e.Message
	}
	return "invalid CEL expression: " + iss.Err().Error()
}

func (c celCondition) eval(vars map[string]any) (bool, error) {
	out, _, err := c.prg.Eval(vars)
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("CEL condition returned %s, not bool", out.Type().TypeName())
	}
	return b, nil
}

// compileClauses translates a clause expression to CEL and plans it.
func compileClauses(n *clauseNode) (condition, error) {
	src, err := n.celSource()
	if err != nil {
		return nil, err
	}
	env, err := clauseEnv()
	if err != nil {
		return nil, fmt.Errorf("create CEL environment: %w", err)
	}
	c, err := compileCEL(env, src)
	if err != nil {
		// A bug in the translation, not in the policy.
		return nil, fmt.Errorf("translate clause expression: %w", err)
	}
	c.clauses = true
	return c, nil
}

// compileApproval compiles a requires_approval_if condition, which may be
// written in CEL or in the clause grammar:
//
//  1. If expr compiles as CEL, it is CEL. Every condition accepted before
//     the clause grammar existed thus keeps its meaning. Text that is valid
//     in both grammars (args.mode == 'x') evaluates the same in both except
//     where an operand is missing or of another type: CEL then fails and
//     requires approval (fail-closed) where a clause would be false.
//  2. Otherwise, if it parses as a clause expression, it is one.
//  3. Otherwise it is unparseable when it reads as clauses
//     (looksLikeClauses, or it parsed but was too long to translate) or is
//     not even CEL syntax: compileApproval returns
//     no condition and the reason, the clause error if expr reads as
//     clauses, else the CEL error; the caller warns and makes approval
//     always required (fail-safe).
//  4. CEL that parses but does not type-check (an unknown variable, a
//     result that is not bool) and does not read as clauses is an error,
//     as it is for rules.
func compileApproval(expr string) (cond condition, unparseable string, err error) {
	if strings.TrimSpace(expr) == "" {
		return nil, "", errors.New("empty condition: write CEL or a clause expression, or remove requires_approval_if")
	}
	c, err := compileCondition(expr)
	if err == nil {
		return c, "", nil
	}
	n, clauseErr := parseClauses(expr)
	parsed := clauseErr == nil
	if parsed {
		c, err := compileClauses(n)
		if err == nil {
			return c, "", nil
		}
		clauseErr = err // too long once translated
	}
	var ce *celError
	if !errors.As(err, &ce) {
		return nil, "", err
	}
	if parsed || looksLikeClauses(expr) {
		return nil, clauseErr.Error(), nil
	}
	if ce.syntax {
		return nil, ce.msg, nil
	}
	return nil, "", err
}
