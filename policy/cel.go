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

type celCondition struct{ prg cel.Program }

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
	ast, iss := env.Compile(expr)
	if iss != nil && iss.Err() != nil {
		if errs := iss.Errors(); len(errs) > 0 {
			e := errs[0]
			if loc := e.Location; loc != nil && loc.Line() > 0 {
				return nil, fmt.Errorf("invalid CEL expression at %d:%d: %s", loc.Line(), loc.Column()+1, e.Message)
			}
			return nil, fmt.Errorf("invalid CEL expression: %s", e.Message)
		}
		return nil, fmt.Errorf("invalid CEL expression: %w", iss.Err())
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("CEL expression must evaluate to bool, not %s", t)
	}
	prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize), cel.CostLimit(celCostLimit))
	if err != nil {
		return nil, fmt.Errorf("plan CEL expression: %w", err)
	}
	return celCondition{prg: prg}, nil
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
