package sqltext

import (
	"database/sql/driver"
	"runtime"
	"strings"
	"testing"
	"weak"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
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
			"SELECT 1 WHERE CASE WHEN pg_backend_pid() <> PID THEN false WHEN pg_advisory_unlock(-5) THEN true ELSE false END", 0},
		{keyspace.Pair(-2147483648, 7), true,
			"SELECT pg_advisory_lock($1,$2) IS NOT NULL WHERE pg_backend_pid() = PID",
			"SELECT pg_try_advisory_lock($1,$2) WHERE pg_backend_pid() = PID",
			"SELECT 1 WHERE CASE WHEN pg_backend_pid() <> PID THEN false WHEN pg_advisory_unlock($1,$2) THEN true ELSE false END", 2},
	}
	for _, tt := range tests {
		q := Build(tt.key, tt.placeholders)
		for _, c := range []struct{ name, got, want string }{
			{"guarded lock", guardedText(q.Lock), tt.guardedLock},
			{"guarded try", guardedText(q.Try), tt.guardTry},
			{"unlock", guardedText(q.Unlock), tt.unlock},
		} {
			if c.got != c.want {
				t.Errorf("buildQueries(%v, %v).%s:\ngot  %s\nwant %s", tt.key, tt.placeholders, c.name, c.got, c.want)
			}
		}
		if len(q.Args) != tt.nargs {
			t.Errorf("buildQueries(%v, %v): %d args, want %d", tt.key, tt.placeholders, len(q.Args), tt.nargs)
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
		{false, false, "SELECT pg_backend_pid()::int8*32 + CASE WHEN version() LIKE 'CockroachDB%' THEN 8 WHEN pg_is_in_recovery() THEN 2 WHEN " + foreign + " THEN 4 ELSE 0 END"},
		{true, false, "SELECT pg_backend_pid()::int8*32 + CASE WHEN version() LIKE 'CockroachDB%' THEN 8 WHEN pg_is_in_recovery() THEN 2 WHEN " + foreignArg + " THEN 4 ELSE 0 END"},
		{false, true, "SELECT pg_backend_pid()::int8*32 + CASE WHEN version() LIKE 'CockroachDB%' THEN 8 WHEN " + foreign + " THEN 4 ELSE 0 END"},
	} {
		v := BuildVerify(tt.placeholders, tt.allowStandby)
		if got := verifyText(v); got != tt.want {
			t.Errorf("buildVerify(%v, %v):\ngot  %s\nwant %s", tt.placeholders, tt.allowStandby, got, tt.want)
		}
		text, args := v.Statement(12345)
		switch {
		case tt.placeholders && (len(args) != 1 || args[0] != (driver.NamedValue{Ordinal: 1, Value: OwnerToken(12345)})):
			t.Errorf("buildVerify(%v, %v): arguments %v, want the token", tt.placeholders, tt.allowStandby, args)
		case !tt.placeholders && !strings.Contains(text, "'"+OwnerToken(12345)+"'"):
			t.Errorf("literal statement lacks the quoted token: %s", text)
		}
	}
}

// verifyText is v's text as the tests pin it: with literals, its owner
// token reads 'TOKEN'.
func verifyText(v *Verify) string { return v.TextWith("TOKEN") }

// guardedText is s's guarded form as TestBuildQueries pins it.
func guardedText(s *LockStmt) string { return strings.Join(s.Parts, "PID") }

// A guarded form is made once per driver connection and session, and made
// again for another.
func TestGuardedFor(t *testing.T) {
	q := Build(keyspace.Int64(9), true)
	a, b := new(int), new(int)
	pa, pb := drv.ConnPointer(a), drv.ConnPointer(b)
	ra, rb := weak.Make(pa), weak.Make(pb)
	var c Cache
	g1 := q.Lock.GuardedFor(&c, pa, ra, 100)
	if want := "SELECT pg_advisory_lock($1) IS NOT NULL WHERE pg_backend_pid() = 100"; g1.Text != want {
		t.Errorf("guarded form %q, want %q", g1.Text, want)
	}
	if g := q.Lock.GuardedFor(&c, pa, ra, 100); g != g1 {
		t.Error("the guarded form was made again for the same connection and session")
	}
	if g := q.Lock.GuardedFor(&c, pa, ra, 101); g == g1 || g.PID != 101 {
		t.Errorf("another session on the same connection got %+v", g)
	}
	if g := q.Lock.GuardedFor(&c, pb, rb, 101); g.Conn != rb {
		t.Errorf("another connection got %+v", g)
	}
	if g := q.Lock.Cached(&c, pb); g == nil || g.PID != 101 {
		t.Errorf("Cached for the last connection = %+v, want its form", g)
	}
	if g := q.Try.Cached(&c, pb); g != nil {
		t.Errorf("Cached for another statement = %+v, want nil", g)
	}
	c.Forget()
	if g := q.Lock.Cached(&c, pb); g != nil {
		t.Errorf("Cached after Forget = %+v, want nil", g)
	}
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
}

func TestTxQueries(t *testing.T) {
	q := Build(keyspace.Pair(1, 2), false)
	if got, want := q.TxQuery(false, false), "SELECT CASE WHEN version() LIKE 'CockroachDB%' THEN 8 WHEN pg_is_in_recovery() THEN 2 ELSE 0 END FROM pg_advisory_xact_lock(1,2)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	q = Build(keyspace.Int64(5), true)
	if got, want := q.TxQuery(true, true), "SELECT pg_try_advisory_xact_lock_shared($1), CASE WHEN version() LIKE 'CockroachDB%' THEN 8 WHEN pg_is_in_recovery() THEN 2 ELSE 0 END"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
