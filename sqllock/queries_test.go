package sqllock

import (
	"testing"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

func TestBuildQueries(t *testing.T) {
	tests := []struct {
		key          keyspace.Key
		placeholders bool
		lock, try    string
		nargs        int
	}{
		{keyspace.Int64(-5), false,
			"SELECT pg_backend_pid(), pg_is_in_recovery() FROM pg_advisory_lock(-5)",
			"SELECT pg_try_advisory_lock(-5), pg_backend_pid(), pg_is_in_recovery()", 0},
		{keyspace.Pair(-2147483648, 7), false,
			"SELECT pg_backend_pid(), pg_is_in_recovery() FROM pg_advisory_lock(-2147483648,7)",
			"SELECT pg_try_advisory_lock(-2147483648,7), pg_backend_pid(), pg_is_in_recovery()", 0},
		{keyspace.Int64(9), true,
			"SELECT pg_backend_pid(), pg_is_in_recovery() FROM pg_advisory_lock($1)",
			"SELECT pg_try_advisory_lock($1), pg_backend_pid(), pg_is_in_recovery()", 1},
		{keyspace.Pair(1, 2), true,
			"SELECT pg_backend_pid(), pg_is_in_recovery() FROM pg_advisory_lock($1,$2)",
			"SELECT pg_try_advisory_lock($1,$2), pg_backend_pid(), pg_is_in_recovery()", 2},
	}
	for _, tt := range tests {
		q := buildQueries(tt.key, tt.placeholders)
		if q.lock != tt.lock || q.try != tt.try || len(q.args) != tt.nargs {
			t.Errorf("buildQueries(%v, %v) = %q, %q, %d args; want %q, %q, %d",
				tt.key, tt.placeholders, q.lock, q.try, len(q.args), tt.lock, tt.try, tt.nargs)
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
	q := buildQueries(keyspace.Pair(1, 2), false)
	if got, want := q.txQuery("pg_advisory_xact_lock", false), "SELECT pg_is_in_recovery() FROM pg_advisory_xact_lock(1,2)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	q = buildQueries(keyspace.Int64(5), true)
	if got, want := q.txQuery("pg_try_advisory_xact_lock_shared", true), "SELECT pg_try_advisory_xact_lock_shared($1), pg_is_in_recovery()"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
