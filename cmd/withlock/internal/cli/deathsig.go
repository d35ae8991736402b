//go:build linux || freebsd

package cli

import (
	"os/exec"
	"syscall"
)

// deathSignal is the signal the kernel sends the command when withlock dies
// (Linux PR_SET_PDEATHSIG, FreeBSD PROC_PDEATHSIG_CTL). SIGKILL, because
// nothing is left to send SIGKILL after a grace period.
const deathSignal = syscall.SIGKILL

// setDeathSignal makes cmd's process get deathSignal when withlock dies.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: deathSignal}
}
