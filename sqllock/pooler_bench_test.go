package sqllock_test

import (
	"context"
	"database/sql"
	"os/exec"
	"runtime"
	"strconv"
	"testing"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// BenchmarkPooler compares an uncontended Lock+Unlock behind PgBouncer in
// transaction mode, where sqllock holds the lock in a transaction, with
// what a user writes there by hand: BEGIN, pg_advisory_xact_lock, COMMIT,
// through database/sql's Tx, the key in the text (lib/pq sends a query
// with parameters in two round trips, which such a pooler may send to two
// server sessions). pgx runs in its exec mode, which survives the pooler.
// One client connection and one server connection: both sides use the
// same ones.
func BenchmarkPooler(b *testing.B) {
	for _, d := range []struct{ label, driver, params string }{
		{"pq", "postgres", ""},
		{"pgx", "pgx", "&default_query_exec_mode=exec"},
	} {
		b.Run("driver="+d.label, func(b *testing.B) {
			bouncer := pgtest.NewBouncer(b, "transaction", 1)
			poolerBesideServer(b, bouncer.PID())
			db, err := sql.Open(d.driver, bouncer.DSN()+d.params)
			check(b, err)
			b.Cleanup(func() { db.Close() })
			db.SetMaxOpenConns(1)
			db.SetMaxIdleConns(1)
			warm(b, db, 1)
			ctx := context.Background()
			k := benchKey(b)
			n, _ := k.Int64()
			lockQ := "SELECT pg_advisory_xact_lock(" + strconv.FormatInt(n, 10) + ")"
			libRef(b, lockUnlockLoop(sqllock.New(db), k), func(b *testing.B) {
				b.ReportAllocs()
				defer reportCPU(b)()
				for b.Loop() {
					tx, err := db.BeginTx(ctx, nil)
					check(b, err)
					_, err = tx.ExecContext(ctx, lockQ)
					check(b, err)
					check(b, tx.Commit())
				}
			})
		})
	}
}

// poolerBesideServer moves the pooler to the last CPU, where make bench
// pins the server (internal/benchrun): started by the benchmark, it would
// otherwise share the client's CPU, and every goroutine the client wakes
// would delay the pooler's forwarding, which a pooler on the database's
// host does not see. Without taskset it stays where it is.
func poolerBesideServer(b *testing.B, pid int) {
	if runtime.NumCPU() < 2 {
		return
	}
	cpu := strconv.Itoa(runtime.NumCPU() - 1)
	if out, err := exec.Command("taskset", "-a", "-p", "-c", cpu, strconv.Itoa(pid)).CombinedOutput(); err != nil {
		b.Logf("pooler stays on the client's CPUs: taskset: %v: %s", err, out)
	}
}
