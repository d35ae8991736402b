package sqllock

import (
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
			"SELECT pg_backend_pid()::int8*32 + CASE WHEN current_setting('sqllock.held', true) <> '' THEN 4 WHEN pg_is_in_recovery() THEN 2 WHEN pg_advisory_lock(-5) IS NOT NULL THEN CASE WHEN set_config('sqllock.held', 'int64(-5)', false) = 'int64(-5)' THEN 1 ELSE 17 END END",
			"SELECT pg_backend_pid()::int8*32 + CASE WHEN current_setting('sqllock.held', true) <> '' THEN 4 WHEN pg_is_in_recovery() THEN 2 WHEN pg_try_advisory_lock(-5) THEN CASE WHEN set_config('sqllock.held', 'int64(-5)', false) = 'int64(-5)' THEN 1 ELSE 17 END ELSE 0 END",
			"SELECT 1 WHERE pg_advisory_unlock(-5) AND set_config('sqllock.held', '', false) = ''", 0},
		{keyspace.Pair(-2147483648, 7), true,
			"SELECT pg_backend_pid()::int8*32 + CASE WHEN current_setting('sqllock.held', true) <> '' THEN 4 WHEN pg_is_in_recovery() THEN 2 WHEN pg_advisory_lock($1,$2) IS NOT NULL THEN CASE WHEN set_config('sqllock.held', 'pair(-2147483648,7)', false) = 'pair(-2147483648,7)' THEN 1 ELSE 17 END END",
			"SELECT pg_backend_pid()::int8*32 + CASE WHEN current_setting('sqllock.held', true) <> '' THEN 4 WHEN pg_is_in_recovery() THEN 2 WHEN pg_try_advisory_lock($1,$2) THEN CASE WHEN set_config('sqllock.held', 'pair(-2147483648,7)', false) = 'pair(-2147483648,7)' THEN 1 ELSE 17 END ELSE 0 END",
			"SELECT 1 WHERE pg_advisory_unlock($1,$2) AND set_config('sqllock.held', '', false) = ''", 2},
	}
	for _, tt := range tests {
		q := buildQueries(tt.key, tt.placeholders, false)
		for _, c := range []struct{ name, got, want string }{{"lock", q.lock, tt.lock}, {"try", q.try, tt.try}, {"unlock", q.unlock, tt.unlock}} {
			if c.got != c.want {
				t.Errorf("buildQueries(%v, %v).%s:\ngot  %s\nwant %s", tt.key, tt.placeholders, c.name, c.got, c.want)
			}
		}
		if len(q.args) != tt.nargs {
			t.Errorf("buildQueries(%v, %v): %d args, want %d", tt.key, tt.placeholders, len(q.args), tt.nargs)
		}
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
