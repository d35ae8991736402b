//go:build !unix

package cli

// inheritable returns nothing: on this platform the command inherits no
// socket, so the lock's session ends when withlock does.
func (s *sockets) inheritable() ([]int, error) { return nil, nil }

// closeFDs does nothing here.
func closeFDs([]int) {}
