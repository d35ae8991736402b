//go:build !unix

package pgtest

import (
	"os"
	"os/exec"
)

// osUser is the OS user that runs the server when it cannot be the current
// one. Off Unix the server always runs as the current user.
type osUser struct {
	name     string
	uid, gid int
}

// serverUser returns nil: off Unix the server runs as the current user.
func serverUser() (*osUser, error) { return nil, nil }

// setCredential does nothing off Unix.
func (u *osUser) setCredential(*exec.Cmd) {}

// reloadSignal stands for PgBouncer's reload signal, which exists only on
// Unix: off Unix, Bouncer.Retarget fails.
var reloadSignal = os.Interrupt
