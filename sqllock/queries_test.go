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

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

func TestBuildQueries(t *testing.T) {
	// Pinned texts, checked against PostgreSQL by the live tests: a change
	// here is a change of wire behaviour. PID stands for the verified
	// session's backend pid.
	tests := []struct {
		key                   keyspace.Key
		placeholders          bool
		guardedLock, guardTry string
		unlock                string
		nargs                 int
	}{
		{keyspace.Int64(-5), false,
			"SELECT pg_advisory_lock(-5) IS NOT NULL WHERE pg_backend_pid() = PID",
			"SELECT pg_try_advisory_lock(-5) WHERE pg_backend_pid() = PID",
			"SELECT 1 WHERE pg_advisory_unlock(-5)", 0},
		{keyspace.Pair(-2147483648, 7), true,
			"SELECT pg_advisory_lock($1,$2) IS NOT NULL WHERE pg_backend_pid() = PID",
			"SELECT pg_try_advisory_lock($1,$2) WHERE pg_backend_pid() = PID",
			"SELECT 1 WHERE pg_advisory_unlock($1,$2)", 2},
	}
	for _, tt := range tests {
		q := buildQueries(tt.key, tt.placeholders)
		for _, c := range []struct{ name, got, want string }{
			{"guarded lock", guardedText(q.lock), tt.guardedLock},
			{"guarded try", guardedText(q.try), tt.guardTry},
			{"unlock", q.unlock, tt.unlock},
		} {
			if c.got != c.want {
				t.Errorf("buildQueries(%v, %v).%s:\ngot  %s\nwant %s", tt.key, tt.placeholders, c.name, c.got, c.want)
			}
		}
		if len(q.args) != tt.nargs {
			t.Errorf("buildQueries(%v, %v): %d args, want %d", tt.key, tt.placeholders, len(q.args), tt.nargs)
		}
	}
}

func TestBuildVerify(t *testing.T) {
	const foreign = "coalesce(nullif(current_setting('sqllock.owner', true), ''), set_config('sqllock.owner', 'TOKEN', false)) <> 'TOKEN'"
	const foreignArg = "coalesce(nullif(current_setting('sqllock.owner', true), ''), set_config('sqllock.owner', $1::text, false)) <> $1::text"
	for _, tt := range []struct {
		placeholders, allowStandby bool
		want                       string
	}{
		{false, false, "SELECT pg_backend_pid()::int8*32 + CASE WHEN pg_is_in_recovery() THEN 2 WHEN " + foreign + " THEN 4 ELSE 0 END"},
		{true, false, "SELECT pg_backend_pid()::int8*32 + CASE WHEN pg_is_in_recovery() THEN 2 WHEN " + foreignArg + " THEN 4 ELSE 0 END"},
		{false, true, "SELECT pg_backend_pid()::int8*32 + CASE WHEN " + foreign + " THEN 4 ELSE 0 END"},
	} {
		v := buildVerify(tt.placeholders, tt.allowStandby)
		if got := verifyText(v); got != tt.want {
			t.Errorf("buildVerify(%v, %v):\ngot  %s\nwant %s", tt.placeholders, tt.allowStandby, got, tt.want)
		}
		text, args := v.statement(12345)
		switch {
		case tt.placeholders && (len(args) != 1 || args[0] != (driver.NamedValue{Ordinal: 1, Value: ownerToken(12345)})):
			t.Errorf("buildVerify(%v, %v): arguments %v, want the token", tt.placeholders, tt.allowStandby, args)
		case !tt.placeholders && !strings.Contains(text, "'"+ownerToken(12345)+"'"):
			t.Errorf("literal statement lacks the quoted token: %s", text)
		}
	}
}

// verifyText is v's text as the tests pin it: with literals, its owner
// token reads 'TOKEN'.
func verifyText(v *verifyStmt) string {
	if v.parts == nil {
		return v.text
	}
	return strings.Join(v.parts, "TOKEN")
}

// guardedText is s's guarded form as TestBuildQueries pins it.
func guardedText(s *lockStmt) string { return strings.Join(s.guarded, "PID") }

// A guarded form is made once per driver connection and session, and made
// again for another.
func TestGuardedFor(t *testing.T) {
	q := buildQueries(keyspace.Int64(9), true)
	a, b := new(int), new(int)
	pa, pb := connPointer(a), connPointer(b)
	ra, rb := weak.Make(pa), weak.Make(pb)
	g1 := q.lock.guardedFor(pa, ra, 100)
	if want := "SELECT pg_advisory_lock($1) IS NOT NULL WHERE pg_backend_pid() = 100"; g1.text != want {
		t.Errorf("guarded form %q, want %q", g1.text, want)
	}
	if g := q.lock.guardedFor(pa, ra, 100); g != g1 {
		t.Error("the guarded form was made again for the same connection and session")
	}
	if g := q.lock.guardedFor(pa, ra, 101); g == g1 || g.pid != 101 {
		t.Errorf("another session on the same connection got %+v", g)
	}
	if g := q.lock.guardedFor(pb, rb, 101); g.conn != rb {
		t.Errorf("another connection got %+v", g)
	}
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
}

// Only a pointer to a value of nonzero size identifies a driver connection.
func TestConnPointer(t *testing.T) {
	type empty struct{}
	for _, dc := range []any{nil, 7, "conn", (*int)(nil), &empty{}} {
		if p := connPointer(dc); p != nil {
			t.Errorf("connPointer(%T) = %p, want nil", dc, p)
		}
	}
	x := new(int64)
	if p := connPointer(x); p == nil {
		t.Error("connPointer(*int64) = nil")
	}
}

// The cache keeps what it is told per connection, forgets only the pid
// it is told to, and drops the entries of connections that are gone.
func TestSessionCache(t *testing.T) {
	var c sessionCache
	a := new(int)
	ra := weak.Make(connPointer(a))
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
		c.remember(weak.Make(connPointer(new(int))), weak.Pointer[byte]{}, int64(i))
	}
	runtime.GC()
	for i := range 200 {
		c.remember(weak.Make(connPointer(new(int))), weak.Pointer[byte]{}, int64(i))
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
	rw, ro := weak.Make(connPointer(w)), weak.Make(connPointer(o))
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

// Each driver connection has its own owner token, the same on every
// checkout; lock statements do not share their argument slices.
func TestOwnerToken(t *testing.T) {
	db := sql.OpenDB(&fakeConnector{})
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
	ta, tb := ownerToken(addrOf(a)), ownerToken(addrOf(b))
	if ta == tb || !strings.HasPrefix(ta, processToken()) {
		t.Errorf("tokens %q and %q: want distinct, with the process token %q", ta, tb, processToken())
	}
	a.Close()
	again, err := db.Conn(ctx) // the pool hands back a's driver connection
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	defer b.Close()
	if got := ownerToken(addrOf(again)); got != ta {
		t.Errorf("same driver connection, token %q then %q", ta, got)
	}

	v := buildVerify(true, false)
	_, args1 := v.statement(1)
	_, args2 := v.statement(2)
	if args1[0].Value != ownerToken(1) || args2[0].Value != ownerToken(2) {
		t.Errorf("argument slices shared: %v %v", args1, args2)
	}
}

func TestWithPlaceholdersOverridesDetection(t *testing.T) {
	for _, on := range []bool{false, true} {
		if l := New(nil, withPlaceholders(on)); l.placeholders != on {
			t.Errorf("withPlaceholders(%v): got %v", on, l.placeholders)
		}
	}
}

func TestTxQueries(t *testing.T) {
	q := buildQueries(keyspace.Pair(1, 2), false)
	if got, want := q.txQuery("pg_advisory_xact_lock", false), "SELECT pg_is_in_recovery() FROM pg_advisory_xact_lock(1,2)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	q = buildQueries(keyspace.Int64(5), true)
	if got, want := q.txQuery("pg_try_advisory_xact_lock_shared", true), "SELECT pg_try_advisory_xact_lock_shared($1), pg_is_in_recovery()"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func addrOf(conn *sql.Conn) uintptr {
	return connAddr(driverConn(conn))
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
			if got := isPgx(db); got != tc.want {
				t.Errorf("isPgx(%T) = %v, want %v", tc.d, got, tc.want)
			}
		})
	}
}
