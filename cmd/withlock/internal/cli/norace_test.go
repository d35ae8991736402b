//go:build !race

package cli

// raceEnabled makes the end-to-end tests build withlock with -race too.
const raceEnabled = false
