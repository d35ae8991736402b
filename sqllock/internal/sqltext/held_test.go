package sqltext

import (
	"testing"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// The statements of a multiplexed session held in a transaction, pinned:
// the live tests check them against PostgreSQL (TestHeldTxStatements*,
// TestPgBouncerSessions* in sqllock).
func TestHeldTxTexts(t *testing.T) {
	h := BuildHeld(keyspace.Int64(-5), 0)
	x := InHeldTx(42, 1700000000000000)
	const out = "pg_backend_pid() <> 42 OR " + XactStart + " <> 1700000000000000"
	for _, c := range []struct{ name, got, want string }{
		{"first", First("/* m */ ", h.First, false)[0], "/* m */ SELECT (pg_backend_pid()::int8*2 + pg_try_advisory_lock(-5)::int)::text || ' ' || " + XactStart + "; SAVEPOINT sqllock"},
		{"try", x.Try(h.In), "SELECT pg_try_advisory_lock(-5) WHERE pg_backend_pid() = 42 AND " + XactStart + " = 1700000000000000"},
		{"unlock", x.Unlock(h.UnlockShared, false, false)[0], "SELECT CASE WHEN " + out + " THEN " + notInTx + " WHEN pg_advisory_unlock_shared(-5) THEN 1 ELSE 0 END"},
		{"last unlock", x.Unlock(h.Unlock, true, false)[0], "SELECT CASE WHEN " + out + " THEN " + notInTx +
			" WHEN pg_advisory_unlock(-5) THEN CASE WHEN pg_advisory_unlock_all() IS NOT NULL THEN 1 ELSE 1 END WHEN pg_advisory_unlock_all() IS NOT NULL THEN 0 ELSE 0 END; ROLLBACK"},
		{"end", x.End(false)[0], "SELECT CASE WHEN " + out + " THEN " + notInTx + " WHEN pg_advisory_unlock_all() IS NOT NULL THEN 1 ELSE 1 END; ROLLBACK"},
		{"probe", x.Probe(), "SELECT pg_backend_pid() WHERE pg_backend_pid() = 42 AND " + XactStart + " = 1700000000000000"},
	} {
		if c.got != c.want {
			t.Errorf("%s:\ngot  %s\nwant %s", c.name, c.got, c.want)
		}
	}
	if got := x.End(true); len(got) != 2 || got[1] != RollbackSQL {
		t.Errorf("End apart: %q", got)
	}
	if got := x.Recover(h.Unlock); len(got) != 2 || got[0] != RecoverSQL {
		t.Errorf("Recover: %q", got)
	}
}
