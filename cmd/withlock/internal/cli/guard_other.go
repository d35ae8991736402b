//go:build !linux

package cli

// guardSupported reports whether commands run under a guard here (see
// guard_linux.go): not on this platform.
const guardSupported = false

// guardLost is unused here.
const guardLost = 't'

// guardEnv is unused here.
const guardEnv = "WITHLOCK_GUARD"

// Guard reports false: withlock never runs as a guard here.
func Guard() (status int, ok bool) { return 0, false }
