//go:build !unix

package cli

import (
	"errors"
	"os"
)

// inheritable returns nothing: on this platform the command inherits no
// socket, so the lock's session ends when withlock does.
func (s *sockets) inheritable() ([]int, error) { return nil, nil }

// closeFDs does nothing here.
func closeFDs([]int) {}

// inheritableCopy is not needed here: there is no guard (see guard_other.go).
func inheritableCopy(*os.File) (int, error) { return -1, errors.ErrUnsupported }
