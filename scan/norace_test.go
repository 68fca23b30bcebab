//go:build !race

package scan

// raceEnabled is set when the race detector is on: it makes sync.Pool drop
// items at random, so allocation counts are not meaningful.
const raceEnabled = false
