//go:build unix

package pgtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
)

// osUser is the OS user that runs the server when it cannot be the current
// one.
type osUser struct {
	name     string
	uid, gid int
}

// serverUser returns the OS user to run PostgreSQL programs as: nil (the
// current user) unless running as root, which initdb and postgres refuse; then
// the "postgres" OS user.
func serverUser() (*osUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(superuser)
	if err != nil {
		return nil, fmt.Errorf("%w: running as root, which PostgreSQL refuses, and no %q OS user to run it as: %v",
			errUnavailable, superuser, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("%w: OS user %q has uid %q, gid %q", errUnavailable, superuser, u.Uid, u.Gid)
	}
	return &osUser{name: u.Username, uid: uid, gid: gid}, nil
}

// setCredential makes cmd run as u, with no supplementary groups. It does
// nothing if u is nil.
func (u *osUser) setCredential(cmd *exec.Cmd) {
	if u == nil {
		return
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{}},
	}
}

// reloadSignal makes PgBouncer reload its configuration.
const reloadSignal = syscall.SIGHUP
