package session

import (
	"runtime"
	"testing"
	"weak"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
)

// The cache keeps what it is told per connection, forgets only the pid
// it is told to, and drops the entries of connections that are gone.
func TestVerifiedCache(t *testing.T) {
	var c verifiedCache
	a := new(int)
	ra := weak.Make(drv.ConnPointer(a))
	c.remember(ra, weak.Pointer[byte]{}, 7)
	if pid, ok := c.lookup(ra); !ok || pid != 7 {
		t.Fatalf("lookup = %d, %v; want 7, true", pid, ok)
	}
	c.forget(ra, 8)
	if _, ok := c.lookup(ra); !ok {
		t.Error("forget with another pid dropped the entry")
	}
	c.forget(ra, 7)
	if _, ok := c.lookup(ra); ok {
		t.Error("forget kept the entry")
	}
	// Connections that die are pruned as others arrive.
	for i := range 200 {
		c.remember(weak.Make(drv.ConnPointer(new(int))), weak.Pointer[byte]{}, int64(i))
	}
	runtime.GC()
	for i := range 200 {
		c.remember(weak.Make(drv.ConnPointer(new(int))), weak.Pointer[byte]{}, int64(i))
	}
	c.remember(ra, weak.Pointer[byte]{}, 7)
	if n := len(c.entries); n > 300 {
		t.Errorf("%d entries after 400 connections came and went: not pruned", n)
	}
	if _, ok := c.lookup(ra); !ok {
		t.Error("a live connection's entry was pruned")
	}
	// A wrapper's entry names its session's owner, which a new wrapper
	// over the same session finds; forgetting the wrapper forgets both.
	w, o := new(int), new(int)
	rw, ro := weak.Make(drv.ConnPointer(w)), weak.Make(drv.ConnPointer(o))
	c.remember(rw, ro, 9)
	if pid, ok := c.lookup(ro); !ok || pid != 9 {
		t.Errorf("owner lookup = %d, %v; want 9, true", pid, ok)
	}
	c.forget(rw, 9)
	if _, ok := c.lookup(ro); ok {
		t.Error("forgetting a wrapper kept its owner's entry")
	}
	runtime.KeepAlive(a)
	runtime.KeepAlive(w)
	runtime.KeepAlive(o)
}
