package sqllock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"runtime"
	"strings"
	"testing"
	"weak"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/lib/pq"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/fakedriver"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// The cache keeps what it is told per connection, forgets only the pid
// it is told to, and drops the entries of connections that are gone.
func TestSessionCache(t *testing.T) {
	var c sessionCache
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

func TestWithPlaceholdersOverridesDetection(t *testing.T) {
	for _, on := range []bool{false, true} {
		if l := New(nil, withPlaceholders(on)); l.placeholders != on {
			t.Errorf("withPlaceholders(%v): got %v", on, l.placeholders)
		}
	}
}

func addrOf(conn *sql.Conn) uintptr {
	return sqltext.ConnAddr(driverConn(conn))
}

// driverConn returns conn's driver connection.
func driverConn(conn *sql.Conn) (dc any) {
	_ = conn.Raw(func(c any) error {
		dc = c
		return nil
	})
	return dc
}

// Wrappers as instrumentation libraries write them: otelsql keeps the
// driver it wraps in an unexported field, sqlhooks embeds it.
type (
	fieldWrapper  struct{ wrapped driver.Driver }
	embedWrapper  struct{ driver.Driver }
	wrapConnector struct{ d driver.Driver }
)

func (w fieldWrapper) Open(name string) (driver.Conn, error) { return w.wrapped.Open(name) }

func (c wrapConnector) Connect(context.Context) (driver.Conn, error) { return nil, driver.ErrBadConn }
func (c wrapConnector) Driver() driver.Driver                        { return c.d }

// pgx is recognised under wrappers, so that they do not silently turn its
// one statement per operation into one prepared statement per key.
func TestIsPgxUnderWrappers(t *testing.T) {
	pgx := stdlib.GetDefaultDriver()
	for _, tc := range []struct {
		name string
		d    driver.Driver
		want bool
	}{
		{"pgx", pgx, true},
		{"field", fieldWrapper{pgx}, true},
		{"embedded", embedWrapper{pgx}, true},
		{"pointer to nested", &fieldWrapper{embedWrapper{pgx}}, true},
		{"lib/pq", &pq.Driver{}, false},
		{"wrapped lib/pq", fieldWrapper{&pq.Driver{}}, false},
		{"nil inside", fieldWrapper{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := sql.OpenDB(wrapConnector{tc.d})
			defer db.Close()
			if got := drv.IsPgx(db); got != tc.want {
				t.Errorf("isPgx(%T) = %v, want %v", tc.d, got, tc.want)
			}
		})
	}
}

// Each driver connection has its own owner token, the same on every
// checkout; lock statements do not share their argument slices.
func TestOwnerToken(t *testing.T) {
	db := sql.OpenDB(&fakedriver.Connector{})
	defer db.Close()
	ctx := context.Background()
	a, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ta, tb := sqltext.OwnerToken(addrOf(a)), sqltext.OwnerToken(addrOf(b))
	if ta == tb || !strings.HasPrefix(ta, sqltext.ProcessToken()) {
		t.Errorf("tokens %q and %q: want distinct, with the process token %q", ta, tb, sqltext.ProcessToken())
	}
	a.Close()
	again, err := db.Conn(ctx) // the pool hands back a's driver connection
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	defer b.Close()
	if got := sqltext.OwnerToken(addrOf(again)); got != ta {
		t.Errorf("same driver connection, token %q then %q", ta, got)
	}

	v := sqltext.BuildVerify(true, false)
	_, args1 := v.Statement(1)
	_, args2 := v.Statement(2)
	if args1[0].Value != sqltext.OwnerToken(1) || args2[0].Value != sqltext.OwnerToken(2) {
		t.Errorf("argument slices shared: %v %v", args1, args2)
	}
}
