package extauthz

import (
	"runtime"
	"sync"
)

// deciders runs decisions off the Check goroutine (so a Check can answer at
// its deadline while its decision is still running) on long-lived
// goroutines. A decision runs deep enough (decision core, policy evaluation,
// audit) to outgrow a fresh goroutine's stack; a goroutine per Check spent
// about a tenth of ext_authz's CPU copying grown stacks in
// BenchmarkCheckGRPC's profile, while the pool's goroutines keep theirs.
// When every worker is busy, a decision gets a goroutine of its own, so a
// slow store never queues checks behind it. One pool serves every Server in
// the process; its workers start at the first decision and never exit.
var deciders = sync.OnceValue(func() *pool {
	return newPool(max(64, 32*runtime.GOMAXPROCS(0)))
})

// pool is a fixed set of worker goroutines with an overflow to new ones.
type pool struct{ work chan func() }

func newPool(workers int) *pool {
	p := &pool{work: make(chan func())}
	for range workers {
		go func() {
			for f := range p.work {
				f()
			}
		}()
	}
	return p
}

// run runs f on an idle worker, or on a new goroutine when none is idle.
func (p *pool) run(f func()) {
	select {
	case p.work <- f:
	default:
		go f()
	}
}
