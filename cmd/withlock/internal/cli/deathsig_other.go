//go:build !linux && !freebsd

package cli

import (
	"os/exec"
	"syscall"
)

// deathSignal is 0: this platform cannot signal the command when withlock
// dies, so the command runs on (see docs/withlock.md).
const deathSignal syscall.Signal = 0

// setDeathSignal does nothing here.
func setDeathSignal(*exec.Cmd) {}
