package sqllock_test

import (
	"context"
	"database/sql"
	"os/exec"
	"runtime"
	"strconv"
	"testing"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// BenchmarkPooler compares an uncontended Lock+Unlock behind PgBouncer in
// transaction mode, where sqllock holds the lock in a transaction, with
// what a user writes there by hand (xactLockLoop). Both sides use the
// same client and server connections.
func BenchmarkPooler(b *testing.B) {
	eachPoolerDriver(b, 1, func(b *testing.B, db *sql.DB) {
		libRef(b, lockUnlockLoop(sqllock.New(db), benchKey(b)), xactLockLoop(db, benchKey(b)))
	})
}

// BenchmarkPoolerSessions is BenchmarkPooler for a Locker WithSessions(1),
// whose session carries its locks in one transaction held open while it
// carries any: alone, each Lock opens that transaction and each Unlock
// ends it; busy, the session carries another lock throughout, as one of
// many tenants' locks would be, and Lock and Unlock run inside its
// transaction. No target: it shows what a shared session costs there.
func BenchmarkPoolerSessions(b *testing.B) {
	eachPoolerDriver(b, 2, func(b *testing.B, db *sql.DB) {
		l := sqllock.New(db, sqllock.WithSessions(1))
		k := benchKey(b)
		b.Run("carrying=none", func(b *testing.B) {
			libRef(b, lockUnlockLoop(l, k), xactLockLoop(db, k))
		})
		b.Run("carrying=another", func(b *testing.B) {
			other := l.Mutex(b.Name() + "/other")
			check(b, other.Lock(context.Background()))
			defer func() { check(b, other.Unlock(context.Background())) }()
			libRef(b, lockUnlockLoop(l, k), xactLockLoop(db, k))
		})
	})
}

// eachPoolerDriver runs f for lib/pq and pgx behind PgBouncer in
// transaction mode, with n server connections. pgx runs in its exec mode,
// which survives the pooler. db has two client connections: a shared
// session keeps one, and its server connection, while it carries a lock.
func eachPoolerDriver(b *testing.B, n int, f func(b *testing.B, db *sql.DB)) {
	for _, d := range []struct{ label, driver, params string }{
		{"pq", "postgres", ""},
		{"pgx", "pgx", "&default_query_exec_mode=exec"},
	} {
		b.Run("driver="+d.label, func(b *testing.B) {
			bouncer := pgtest.NewBouncer(b, "transaction", n)
			poolerBesideServer(b, bouncer.PID())
			db, err := sql.Open(d.driver, bouncer.DSN()+d.params)
			check(b, err)
			b.Cleanup(func() { db.Close() })
			db.SetMaxOpenConns(2)
			db.SetMaxIdleConns(2)
			warm(b, db, 1)
			f(b, db)
		})
	}
}

// xactLockLoop is what a user writes by hand behind a transaction pooler
// to run under k's lock: BEGIN, pg_advisory_xact_lock, COMMIT, through
// database/sql's Tx, the key in the text (lib/pq sends a query with
// parameters in two round trips, which such a pooler may send to two
// server sessions).
func xactLockLoop(db *sql.DB, k keyspace.Key) func(b *testing.B) {
	n, _ := k.Int64()
	lockQ := "SELECT pg_advisory_xact_lock(" + strconv.FormatInt(n, 10) + ")"
	return func(b *testing.B) {
		ctx := context.Background()
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			tx, err := db.BeginTx(ctx, nil)
			check(b, err)
			_, err = tx.ExecContext(ctx, lockQ)
			check(b, err)
			check(b, tx.Commit())
		}
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
