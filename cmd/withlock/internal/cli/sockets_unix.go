//go:build unix

package cli

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// inheritable duplicates the socket of every connection open now, without
// close-on-exec, so that the next command withlock starts inherits them at
// the same numbers. One of them is the lock's session; any other is an idle
// session of the same pool, which holds no lock (see docs/withlock.md).
// The caller closes them with closeFDs once the command has started;
// withlock starts no other process meanwhile that could inherit them.
//
// Not exec's ExtraFiles: those take descriptors 3, 4, ..., replacing any
// that withlock was given for the command (3>>audit.log). Not net.Conn's
// File either: its Fd would put the shared socket in blocking mode.
func (s *sockets) inheritable() ([]int, error) {
	var fds []int
	for _, c := range s.conns() {
		fd, err := dupSocket(c)
		if errors.Is(err, net.ErrClosed) {
			continue // closed since: not the session holding the lock
		}
		if err != nil {
			closeFDs(fds)
			return nil, err
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

// minInheritedFD: the duplicates go above the descriptors that a shell
// script names in its own redirections (exec 9>>log), which would replace
// them in the script and in what it starts.
const minInheritedFD = 10

// dupSocket returns a duplicate of c's socket descriptor, numbered
// minInheritedFD or above.
func dupSocket(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("a %T connection has no socket to pass on", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, dupErr := -1, error(nil)
	err = rc.Control(func(sysfd uintptr) { fd, dupErr = dupAbove(int(sysfd)) })
	if err != nil {
		return -1, err
	}
	return fd, dupErr
}

// inheritableCopy returns a duplicate of f's descriptor that the next
// command withlock starts inherits, numbered minInheritedFD or above.
func inheritableCopy(f *os.File) (int, error) {
	return dupAbove(int(f.Fd()))
}

// dupAbove duplicates descriptor fd, without close-on-exec, at
// minInheritedFD or above.
func dupAbove(fd int) (int, error) {
	var low []int // dup takes the lowest free number: hold those until past them
	defer func() { closeFDs(low) }()
	for {
		d, err := syscall.Dup(fd)
		if err != nil {
			return -1, os.NewSyscallError("dup", err)
		}
		if d >= minInheritedFD {
			return d, nil
		}
		low = append(low, d)
	}
}

// closeFDs closes descriptors from inheritable.
func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = syscall.Close(fd)
	}
}
