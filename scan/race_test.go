//go:build race

package scan

// raceEnabled is set when the race detector is on (see norace_test.go).
const raceEnabled = true
