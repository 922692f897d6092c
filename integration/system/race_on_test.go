//go:build race

package system

// raceEnabled: built with -race, which makes timings meaningless.
const raceEnabled = true
