//go:build linux

package cli

import (
	"syscall"
	"testing"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
)

// TestSocketsInheritable checks that inheritable duplicates the socket of
// the one open session, above the descriptors shells name, without
// close-on-exec, and that closed connections are forgotten.
func TestSocketsInheritable(t *testing.T) {
	cfg, err := parseDB(dbSource{dsn: pgtest.DSN(t)}, "withlock-test")
	if err != nil {
		t.Fatal(err)
	}
	var s sockets
	s.track(cfg)
	db, err := connect(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	fds, err := s.inheritable()
	if err != nil {
		t.Fatal(err)
	}
	defer closeFDs(fds)
	conns := s.conns()
	if len(fds) != 1 || len(conns) != 1 {
		t.Fatalf("got %d descriptors for %d connections, want 1 for the one session", len(fds), len(conns))
	}
	if fds[0] < minInheritedFD {
		t.Errorf("got descriptor %d, want %d or above", fds[0], minInheritedFD)
	}
	if flags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fds[0]), syscall.F_GETFD, 0); errno != 0 || flags&syscall.FD_CLOEXEC != 0 {
		t.Errorf("descriptor flags %#x, %v; want no close-on-exec", flags, errno)
	}
	var orig, dup syscall.Stat_t
	if err := syscall.Fstat(fds[0], &dup); err != nil {
		t.Fatal(err)
	}
	rc, err := conns[0].(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(fd uintptr) { err = syscall.Fstat(int(fd), &orig) }); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if orig.Ino != dup.Ino {
		t.Errorf("the duplicate is socket %d, want the session's, %d", dup.Ino, orig.Ino)
	}
	if err := db.PingContext(t.Context()); err != nil {
		t.Fatal(err)
	}

	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(s.conns()); n != 0 {
		t.Errorf("%d connections recorded after the pool closed, want 0", n)
	}
}
