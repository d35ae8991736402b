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
			"SELECT (s.pid::int8 << 5) | (CASE WHEN s.rec THEN 2 ELSE 0 END) | (CASE WHEN s.prior <> '' THEN 4 ELSE 0 END) | 1 | (CASE WHEN s.prior <> '' OR s.rec THEN (CASE WHEN pg_advisory_unlock(-5) THEN 0 ELSE 8 END) ELSE (CASE WHEN set_config('sqllock.held', 'int64(-5)', false) = 'int64(-5)' THEN 0 ELSE 16 END) END) FROM (SELECT pg_backend_pid() AS pid, pg_is_in_recovery() AS rec, COALESCE(current_setting('sqllock.held', true), '') AS prior FROM pg_advisory_lock(-5) OFFSET 0) s",
			"SELECT (s.pid::int8 << 5) | (CASE WHEN s.rec THEN 2 ELSE 0 END) | (CASE WHEN s.prior <> '' THEN 4 ELSE 0 END) | (CASE WHEN s.g THEN 1 | (CASE WHEN s.prior <> '' OR s.rec THEN (CASE WHEN pg_advisory_unlock(-5) THEN 0 ELSE 8 END) ELSE (CASE WHEN set_config('sqllock.held', 'int64(-5)', false) = 'int64(-5)' THEN 0 ELSE 16 END) END) ELSE 0 END) FROM (SELECT pg_try_advisory_lock(-5) AS g, pg_backend_pid() AS pid, pg_is_in_recovery() AS rec, COALESCE(current_setting('sqllock.held', true), '') AS prior OFFSET 0) s",
			"SELECT pg_advisory_unlock(-5) AND set_config('sqllock.held', '', false) = ''", 0},
		{keyspace.Pair(-2147483648, 7), true,
			"SELECT (s.pid::int8 << 5) | (CASE WHEN s.rec THEN 2 ELSE 0 END) | (CASE WHEN s.prior <> '' THEN 4 ELSE 0 END) | 1 | (CASE WHEN s.prior <> '' OR s.rec THEN (CASE WHEN pg_advisory_unlock($1,$2) THEN 0 ELSE 8 END) ELSE (CASE WHEN set_config('sqllock.held', 'pair(-2147483648,7)', false) = 'pair(-2147483648,7)' THEN 0 ELSE 16 END) END) FROM (SELECT pg_backend_pid() AS pid, pg_is_in_recovery() AS rec, COALESCE(current_setting('sqllock.held', true), '') AS prior FROM pg_advisory_lock($1,$2) OFFSET 0) s",
			"SELECT (s.pid::int8 << 5) | (CASE WHEN s.rec THEN 2 ELSE 0 END) | (CASE WHEN s.prior <> '' THEN 4 ELSE 0 END) | (CASE WHEN s.g THEN 1 | (CASE WHEN s.prior <> '' OR s.rec THEN (CASE WHEN pg_advisory_unlock($1,$2) THEN 0 ELSE 8 END) ELSE (CASE WHEN set_config('sqllock.held', 'pair(-2147483648,7)', false) = 'pair(-2147483648,7)' THEN 0 ELSE 16 END) END) ELSE 0 END) FROM (SELECT pg_try_advisory_lock($1,$2) AS g, pg_backend_pid() AS pid, pg_is_in_recovery() AS rec, COALESCE(current_setting('sqllock.held', true), '') AS prior OFFSET 0) s",
			"SELECT pg_advisory_unlock($1,$2) AND set_config('sqllock.held', '', false) = ''", 2},
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
