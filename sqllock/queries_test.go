package sqllock

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

func TestBuildQueries(t *testing.T) {
	// Pinned texts, checked against PostgreSQL by the live tests: a change
	// here is a change of wire behaviour.
	tests := []struct {
		key          keyspace.Key
		placeholders bool
		lock, try    string
		unlock       string
		nargs        int
	}{
		{keyspace.Int64(-5), false,
			"SELECT pg_backend_pid()::int8*32 + CASE WHEN pg_is_in_recovery() THEN 2 WHEN coalesce(nullif(current_setting('sqllock.owner', true), ''), set_config('sqllock.owner', 'TOKEN', false)) <> 'TOKEN' THEN 4 WHEN pg_advisory_lock(-5) IS NOT NULL THEN 1 END",
			"SELECT pg_backend_pid()::int8*32 + CASE WHEN pg_is_in_recovery() THEN 2 WHEN coalesce(nullif(current_setting('sqllock.owner', true), ''), set_config('sqllock.owner', 'TOKEN', false)) <> 'TOKEN' THEN 4 WHEN pg_try_advisory_lock(-5) THEN 1 ELSE 0 END",
			"SELECT 1 WHERE pg_advisory_unlock(-5)", 0},
		{keyspace.Pair(-2147483648, 7), true,
			"SELECT CASE WHEN pg_is_in_recovery() THEN 2 WHEN coalesce(nullif(current_setting('sqllock.owner', true), ''), set_config('sqllock.owner', $3::text, false)) <> $3::text THEN pg_backend_pid()::int8*32 + 4 WHEN pg_advisory_lock($1,$2) IS NOT NULL THEN pg_backend_pid()::int8*32 + 1 END",
			"SELECT CASE WHEN NOT pg_try_advisory_lock($1,$2) THEN 0 WHEN pg_is_in_recovery() THEN CASE WHEN pg_advisory_unlock($1,$2) THEN 2 END WHEN coalesce(nullif(current_setting('sqllock.owner', true), ''), set_config('sqllock.owner', $3::text, false)) <> $3::text THEN CASE WHEN pg_advisory_unlock($1,$2) THEN pg_backend_pid()::int8*32 + 4 END ELSE pg_backend_pid()::int8*32 + 1 END",
			"SELECT 1 WHERE pg_advisory_unlock($1,$2)", 2},
	}
	for _, tt := range tests {
		q := buildQueries(tt.key, tt.placeholders, false)
		lock, try := sqlText(q.lock), sqlText(q.try)
		for _, c := range []struct{ name, got, want string }{{"lock", lock, tt.lock}, {"try", try, tt.try}, {"unlock", q.unlock, tt.unlock}} {
			if c.got != c.want {
				t.Errorf("buildQueries(%v, %v).%s:\ngot  %s\nwant %s", tt.key, tt.placeholders, c.name, c.got, c.want)
			}
		}
		if len(q.args) != tt.nargs {
			t.Errorf("buildQueries(%v, %v): %d args, want %d", tt.key, tt.placeholders, len(q.args), tt.nargs)
		}
		if _, args := q.lock.forConn(q.args, 12345); tt.placeholders && (len(args) != tt.nargs+1 || args[tt.nargs] != ownerToken(12345)) {
			t.Errorf("buildQueries(%v, %v): lock arguments %v, want the key's and the token", tt.key, tt.placeholders, args)
		}
	}
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

	q := buildQueries(keyspace.Int64(1), true, false)
	_, args1 := q.lock.forConn(q.args, 1)
	_, args2 := q.lock.forConn(q.args, 2)
	_, args1again := q.lock.forConn(q.args, 1)
	if args1[1] != ownerToken(1) || args2[1] != ownerToken(2) || args1again[1] != ownerToken(1) || len(q.args) != 1 {
		t.Errorf("argument slices shared: %v %v %v %v", args1, args2, args1again, q.args)
	}
	ql := buildQueries(keyspace.Int64(1), false, false)
	if text, _ := ql.lock.forConn(nil, 7); !strings.Contains(text, "'"+ownerToken(7)+"'") {
		t.Errorf("literal statement lacks the quoted token: %s", text)
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
	q := buildQueries(keyspace.Pair(1, 2), false, false)
	if got, want := q.txQuery("pg_advisory_xact_lock", false), "SELECT pg_is_in_recovery() FROM pg_advisory_xact_lock(1,2)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	q = buildQueries(keyspace.Int64(5), true, false)
	if got, want := q.txQuery("pg_try_advisory_xact_lock_shared", true), "SELECT pg_try_advisory_xact_lock_shared($1), pg_is_in_recovery()"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func addrOf(conn *sql.Conn) uintptr {
	addr, _ := driverConn(conn)
	return addr
}
