//go:build unix

package cli

import (
	"os"
	"syscall"
)

// forwardedSignals are the signals withlock passes on to the command. While
// withlock still waits for the lock, they stop the wait instead.
var forwardedSignals = []os.Signal{
	syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP,
	syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
}

// terminate asks p to stop, as the first step after a lost lock.
func terminate(p *os.Process) error { return p.Signal(syscall.SIGTERM) }

// exitStatus is the shell's view of how a process ended: its exit code, or
// 128+N if signal N killed it.
func exitStatus(state *os.ProcessState) int {
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ExitSignalBase + int(ws.Signal())
	}
	return state.ExitCode()
}

// signalNumber returns N for a signal, for the exit status 128+N.
func signalNumber(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return int(s)
	}
	return 0
}

// signalName returns a signal's conventional name, such as SIGTERM.
func signalName(sig os.Signal) string {
	names := map[os.Signal]string{
		syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM", syscall.SIGHUP: "SIGHUP",
		syscall.SIGQUIT: "SIGQUIT", syscall.SIGUSR1: "SIGUSR1", syscall.SIGUSR2: "SIGUSR2",
	}
	if n, ok := names[sig]; ok {
		return n
	}
	return sig.String()
}
