//go:build !unix

package cli

import "os"

// forwardedSignals are the signals withlock passes on to the command. While
// withlock still waits for the lock, they stop the wait instead.
var forwardedSignals = []os.Signal{os.Interrupt}

// terminate asks p to stop, as the first step after a lost lock. Without
// SIGTERM, that is a kill.
func terminate(p *os.Process) error { return p.Kill() }

// exitStatus is the process's exit code.
func exitStatus(state *os.ProcessState) int { return state.ExitCode() }

// signalNumber returns N for a signal, for the exit status 128+N: 2 for an
// interrupt, as SIGINT on Unix.
func signalNumber(os.Signal) int { return 2 }

// signalName returns a signal's name.
func signalName(sig os.Signal) string { return sig.String() }
