package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/session"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/settle"
)

// eachBouncerDriver opens a pool with each driver through a PgBouncer of
// its own (pool mode and size as given), so that each driver meets server
// sessions that no other client has marked. pgx's default named prepared
// statements do not survive transaction pooling in PgBouncer before 1.21,
// so pgx uses the simple protocol there, as its users behind such a pooler
// must.
func eachBouncerDriver(t *testing.T, poolMode string, poolSize int, f func(t *testing.T, db *sql.DB)) {
	t.Helper()
	for _, d := range []struct{ name, driver, params string }{
		{"pq", "postgres", ""},
		{"pgx", "pgx", "&default_query_exec_mode=simple_protocol"},
		{"pgx-exec", "pgx", "&default_query_exec_mode=exec"},
	} {
		t.Run(d.name, func(t *testing.T) {
			b := pgtest.NewBouncer(t, poolMode, poolSize)
			db, err := sql.Open(d.driver, b.DSN()+d.params+"&application_name="+appName(t))
			require.NoError(t, err)
			t.Cleanup(func() { db.Close() })
			f(t, db)
		})
	}
}

func TestPgBouncerSessionMode(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "session", 4, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		a, other := l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, a.Lock(t.Context()))
		ok, err := other.TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "session pooling keeps session locks working")
		require.NoError(t, a.Unlock(t.Context()))
		ok, err = other.TryLock(t.Context())
		require.NoError(t, err)
		assert.True(t, ok)
		require.NoError(t, other.Unlock(t.Context()))
	})
}

// Behind a transaction pooler, a lock is held in a transaction that pins
// its server session: locks exclude, shared locks share, a cancelled wait
// takes nothing, and once everything is unlocked no server session the
// pooler keeps carries a lock or an open transaction.
func TestPgBouncerTransactionModeLocks(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "transaction", 4, func(t *testing.T, db *sql.DB) {
		ctx := t.Context()
		l := sqllock.New(db)
		a, other := l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, a.Lock(ctx))
		direct := pgtest.DB(t, "pgx")
		waitRows(t, direct, a.Key(), 1, 0)

		ok, err := other.TryLock(ctx)
		require.NoError(t, err)
		assert.False(t, ok, "a held lock excludes another client connection")
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		err = other.LockShared(short)
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)
		waitRows(t, direct, a.Key(), 1, 0)

		require.NoError(t, a.Unlock(ctx))
		waitRows(t, direct, a.Key(), 0, 0)
		require.NoError(t, other.LockShared(ctx))
		b := l.Mutex(t.Name())
		ok, err = b.TryLockShared(ctx)
		require.NoError(t, err)
		assert.True(t, ok, "shared locks share")
		waitRows(t, direct, a.Key(), 2, 0)
		require.NoError(t, other.UnlockShared(ctx))
		require.NoError(t, b.UnlockShared(ctx))
		waitRows(t, direct, a.Key(), 0, 0)
		assertNoOpenTransactions(t, direct)
	})
}

// appName is the application_name of a test's connections: the pooler
// passes it on to the server sessions that serve them.
func appName(t *testing.T) string {
	return strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
}

// A storm of locks under random deadlines behind a transaction pooler, six
// client connections on one key, exclusive and shared: never two holders
// where one is exclusive, and once every call has returned, no lock is
// left in pg_locks and no server session of the pooler's is left in a
// transaction or carrying a lock.
func TestPgBouncerTransactionModeStorm(t *testing.T) {
	t.Parallel()
	pgBouncerStorm(t, false)
}

// The same storm with BEGIN sent apart from the try, as for a driver that
// takes one statement at a time: a try that fails leaves BEGIN's
// transaction open, which must end too.
func TestPgBouncerTransactionModeStormBeginApart(t *testing.T) {
	t.Parallel()
	pgBouncerStorm(t, true)
}

func pgBouncerStorm(t *testing.T, beginApart bool) {
	eachBouncerDriver(t, "transaction", 20, func(t *testing.T, db *sql.DB) {
		db.SetMaxIdleConns(8)
		l := sqllock.New(db)
		if beginApart {
			sqllock.SetHeldSplit(l)
		}
		key := l.Mutex(t.Name()).Key()
		var mu sync.Mutex
		holders, exclusive, grants := 0, false, 0
		var wg sync.WaitGroup
		for w := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(w), 7))
				m := l.Mutex(t.Name())
				for range 60 {
					shared := rng.IntN(3) == 0
					// Half the calls under deadlines of up to 30ms: a
					// connection pgx ends at a deadline costs the pooler a new
					// server session (about 40ms here), so shorter ones
					// throughout would starve every call.
					ctx, cancel := context.WithTimeout(t.Context(), deadline(rng))
					var err error
					if shared {
						err = m.LockShared(ctx)
					} else {
						err = m.Lock(ctx)
					}
					cancel()
					if err != nil {
						if !errors.Is(err, context.DeadlineExceeded) {
							t.Errorf("lock: %v", err)
						}
						continue
					}
					mu.Lock()
					if exclusive || !shared && holders > 0 {
						t.Errorf("two holders at once, one of them exclusive")
					}
					holders++
					exclusive = !shared
					grants++
					mu.Unlock()
					time.Sleep(time.Duration(rng.IntN(500)) * time.Microsecond)
					mu.Lock()
					holders--
					exclusive = false
					mu.Unlock()
					ctx, cancel = context.WithTimeout(t.Context(), deadline(rng))
					if shared {
						err = m.UnlockShared(ctx)
					} else {
						err = m.Unlock(ctx)
					}
					cancel()
					if err != nil {
						t.Errorf("unlock: %v", err)
					}
				}
			}()
		}
		wg.Wait()
		t.Logf("%d grants", grants)
		require.NotZero(t, grants)
		// One lock more: the pooler keeps a server session that served the
		// test to look at, even if the storm's settling ended every other.
		last := l.Mutex(t.Name())
		require.NoError(t, last.Lock(t.Context()))
		require.NoError(t, last.Unlock(t.Context()))
		direct := pgtest.DB(t, "pgx")
		held, waiting := lockRows(t, direct, key)
		assert.Zero(t, held+waiting, "locks left in pg_locks once every call returned")
		assertNoOpenTransactions(t, direct)
	})
}

// deadline is a storm call's deadline: none to speak of, or up to 30ms.
func deadline(rng *rand.Rand) time.Duration {
	if rng.IntN(2) == 0 {
		return time.Minute
	}
	return time.Duration(rng.IntN(30000)) * time.Microsecond
}

// A fenced lock held in a transaction draws its token on another session,
// so that the transaction that holds it has no transaction id (which would
// hold back VACUUM while the lock is held): tokens still grow from grant to
// grant.
func TestPgBouncerHeldFencing(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "transaction", 4, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db, sqllock.WithFencing())
		mu := l.Mutex(t.Name())
		direct := pgtest.DB(t, "pgx")
		var last uint64
		for range 3 {
			require.NoError(t, mu.Lock(t.Context()))
			token, ok := mu.Token()
			require.True(t, ok)
			assert.Greater(t, token, last, "each grant's token is larger than the one before")
			last = token
			var xid, xmin sql.NullString
			require.NoError(t, direct.QueryRowContext(t.Context(),
				"SELECT backend_xid::text, backend_xmin::text FROM pg_stat_activity WHERE pid = $1", backendOf(t, direct, mu.Key())).Scan(&xid, &xmin))
			assert.False(t, xid.Valid, "the holding transaction has a transaction id: %s", xid.String)
			assert.False(t, xmin.Valid, "the holding transaction holds a snapshot: %s", xmin.String)
			require.NoError(t, mu.Unlock(t.Context()))
		}
		assertNoOpenTransactions(t, direct)
	})
}

// A statement-mode pooler runs each statement wherever it likes and
// refuses transactions: no server session can hold a lock for a client.
func TestPgBouncerStatementModeRefused(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "statement", 2, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		err := mu.Lock(t.Context())
		require.ErrorIs(t, err, sqllock.ErrSharedSession)
		assert.Contains(t, err.Error(), "statement-mode pooler cannot hold a lock")
		ok, err := mu.TryLockShared(t.Context())
		require.ErrorIs(t, err, sqllock.ErrSharedSession)
		assert.False(t, ok)
		waitRows(t, pgtest.DB(t, "pgx"), mu.Key(), 0, 0)
	})
}

// assertNoOpenTransactions fails if a server session that served the
// test's connections sits in a transaction or carries an advisory lock.
func assertNoOpenTransactions(t *testing.T, direct *sql.DB) {
	t.Helper()
	var served, inTx, locks int
	require.NoError(t, direct.QueryRowContext(t.Context(), `SELECT count(*), count(*) FILTER (WHERE a.state LIKE 'idle in transaction%'),
		count(*) FILTER (WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory'))
		FROM pg_stat_activity a WHERE a.application_name = $1`, appName(t)).Scan(&served, &inTx, &locks))
	require.NotZero(t, served, "the pooler passes application_name on to its server sessions")
	assert.Zero(t, inTx, "server sessions left in a transaction")
	assert.Zero(t, locks, "server sessions left carrying advisory locks")
}

func TestPgBouncerTransactionLocks(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "transaction", 3, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		a, other := l.Mutex(t.Name()), l.Mutex(t.Name())
		tx1, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		require.NoError(t, a.LockTx(t.Context(), tx1))

		tx2, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		ok, err := other.TryLockTx(t.Context(), tx2)
		require.NoError(t, err)
		assert.False(t, ok, "transaction locks exclude behind a transaction pooler")
		require.NoError(t, tx1.Commit())
		ok, err = other.TryLockTx(t.Context(), tx2)
		require.NoError(t, err)
		assert.True(t, ok, "commit released the lock")
		require.NoError(t, tx2.Rollback())
		waitRows(t, pgtest.DB(t, "pgx"), a.Key(), 0, 0)
	})
}

// Behind a transaction pooler, a client connection's statements reach
// whichever server session is free. When the session that a connection's
// first lock verified is busy with another client's transaction, the next
// lock on that connection reaches another session: its guarded form finds
// another backend there and takes nothing, and the verify statement and the guarded form take the
// lock on the session the pooler chose.
func TestPgBouncerTransactionModeSessionMoves(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "transaction", 2, func(t *testing.T, db *sql.DB) {
		db.SetMaxOpenConns(2)
		ctx := t.Context()
		other, err := db.Conn(ctx) // a second client connection, idle for now
		require.NoError(t, err)
		defer other.Close()
		mu := sqllock.New(db).Mutex(t.Name())
		require.NoError(t, mu.Lock(ctx)) // the first client connection, on server session A
		direct := pgtest.DB(t, "pgx")
		first := backendOf(t, direct, mu.Key())
		require.NoError(t, mu.Unlock(ctx))

		// The other client connection's transaction takes session A, the
		// only one the pooler has opened.
		tx, err := other.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer tx.Rollback()
		var busy int64
		require.NoError(t, tx.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&busy))
		require.Equal(t, first, busy, "the pooler reuses its idle session")

		require.NoError(t, mu.Lock(ctx), "the lock moves to the session the pooler chose")
		assert.NotEqual(t, first, backendOf(t, direct, mu.Key()))
		held, _ := lockRows(t, direct, mu.Key())
		assert.Equal(t, 1, held)
		require.NoError(t, mu.Unlock(ctx))
		waitRows(t, direct, mu.Key(), 0, 0)
	})
}

// On lib/pq, sqllock prepares its statements once per connection, with the
// key as parameters, on sessions that are the connection's own; behind a
// pooler, whose BackendKeyData is not the session's pid, it prepares
// nothing (a named statement could reach another client's session) and
// writes the key into the text.
func TestLibPQPreparesOnDirectSessionsOnly(t *testing.T) {
	t.Parallel()
	count := func(t *testing.T, db *sql.DB) int {
		db.SetMaxOpenConns(1) // the locks and the count on one session
		l := sqllock.New(db)
		for i := range 300 {
			m := l.MutexKey(keyspace.Int64(int64(7_500_000 + i)))
			require.NoError(t, m.Lock(t.Context()))
			require.NoError(t, m.Unlock(t.Context()))
			ok, err := m.TryLockShared(t.Context())
			require.NoError(t, err)
			require.True(t, ok)
			require.NoError(t, m.UnlockShared(t.Context()))
		}
		var n int
		require.NoError(t, db.QueryRowContext(t.Context(), "SELECT count(*) FROM pg_prepared_statements").Scan(&n))
		return n
	}
	t.Run("direct", func(t *testing.T) {
		n := count(t, pgtest.DB(t, "postgres"))
		assert.True(t, n >= 4 && n <= 6, "%d prepared statements after 300 keys, want one per operation", n)
	})
	t.Run("pgbouncer", func(t *testing.T) {
		b := pgtest.NewBouncer(t, "session", 2)
		db, err := sql.Open("postgres", b.DSN())
		require.NoError(t, err)
		t.Cleanup(func() { db.Close() })
		assert.Equal(t, 0, count(t, db), "behind a pooler nothing is prepared")
	})
}

// More connections busy with locks than the statement cache keeps (64):
// statements of forgotten connections are closed when those connections
// are used again, so sessions keep a handful each, not one per re-prepare
// (found in review: 1,734 statements on 70 sessions after 30 rounds).
func TestLibPQPreparedStatementsStayFewBeyondTheCache(t *testing.T) {
	t.Parallel()
	const conns, rounds = 70, 8
	c := pgtest.NewCluster(t, "max_connections=100")
	db, err := sql.Open("postgres", c.DSN())
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	db.SetMaxIdleConns(conns)
	l := sqllock.New(db, sqllock.WithKeepAlive(0, 0))
	ms := make([]*sqllock.Mutex, conns)
	for i := range ms {
		ms[i] = l.MutexKey(keyspace.Int64(int64(7_600_000 + i)))
	}
	for range rounds {
		for _, m := range ms { // all held at once: each on a connection of its own
			require.NoError(t, m.Lock(t.Context()))
		}
		for _, m := range ms {
			require.NoError(t, m.Unlock(t.Context()))
		}
	}
	// pg_prepared_statements shows only the querying session's statements:
	// ask each pooled connection, all taken at once, for its own.
	var most int
	var per []int
	pinned := make([]*sql.Conn, 0, conns)
	for range conns {
		cn, err := db.Conn(t.Context())
		require.NoError(t, err)
		pinned = append(pinned, cn)
		var n int
		require.NoError(t, cn.QueryRowContext(t.Context(), "SELECT count(*) FROM pg_prepared_statements").Scan(&n))
		per = append(per, n)
		most = max(most, n)
	}
	for _, cn := range pinned {
		require.NoError(t, cn.Close())
	}
	t.Logf("prepared statements per session after %d rounds of %d locks held at once: at most %d", rounds, conns, most)
	assert.LessOrEqual(t, most, 4, "per session: %v", per)
}

// A holder behind a transaction pooler that is killed (SIGKILL) or frozen
// (SIGSTOP) loses its lock: the pooler ends the killed client's
// transaction at once; the frozen one's transaction idles into its lease
// (idle_in_transaction_session_timeout, set for that transaction alone),
// with default options and no server setting.
func TestPgBouncerHolderStops(t *testing.T) {
	if testing.Short() {
		t.Skip("takes the default lease, 10s")
	}
	for _, d := range []struct{ name, driver, params string }{
		{"pq", "postgres", ""},
		{"pgx", "pgx", "&default_query_exec_mode=exec"},
	} {
		for _, stop := range []struct {
			name   string
			signal syscall.Signal
			within time.Duration
		}{{"killed", syscall.SIGKILL, 3 * time.Second}, {"frozen", syscall.SIGSTOP, 15 * time.Second}} {
			t.Run(d.name+"/"+stop.name, func(t *testing.T) {
				t.Parallel()
				b := pgtest.NewBouncer(t, "transaction", 4)
				dsn := b.DSN() + d.params
				cmd, lines := startHolder(t, d.driver+" "+dsn+" "+t.Name())
				require.Equal(t, "locked", <-lines)
				db, err := sql.Open(d.driver, dsn)
				require.NoError(t, err)
				t.Cleanup(func() { db.Close() })
				next := sqllock.New(db).Mutex(t.Name())
				ok, err := next.TryLock(t.Context())
				require.NoError(t, err)
				require.False(t, ok, "the holder holds the lock through the pooler")

				require.NoError(t, cmd.Process.Signal(stop.signal))
				stopped := time.Now()
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				defer cancel()
				require.NoError(t, next.Lock(ctx), "the stopped holder's lock was not freed")
				took := time.Since(stopped)
				t.Logf("through PgBouncer (transaction mode), driver %s: another client got the lock %v after the holder was %s", d.name, took.Round(time.Millisecond), stop.name)
				assert.Less(t, took, stop.within)
				require.NoError(t, next.Unlock(t.Context()))
				waitRows(t, pgtest.DB(t, "pgx"), next.Key(), 0, 0)
			})
		}
	}
}

// Behind a pooler, a lock is held in an open transaction, which the
// server's idle_in_transaction_session_timeout ends while it idles: a
// setting the keep-alive cannot beat refuses the lock up front, naming
// it; one it beats leaves the lock held well past it.
func TestPgBouncerIdleInTransactionTimeout(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t, "idle_in_transaction_session_timeout=1s")
	for _, d := range []struct{ name, driver, params string }{
		{"pq", "postgres", ""},
		{"pgx", "pgx", "&default_query_exec_mode=exec"},
	} {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			b := pgtest.NewBouncerFor(t, c.DSN(), "transaction", 4)
			db, err := sql.Open(d.driver, b.DSN()+d.params)
			require.NoError(t, err)
			t.Cleanup(func() { db.Close() })

			err = sqllock.New(db).Mutex(t.Name()).Lock(t.Context())
			require.ErrorIs(t, err, sqllock.ErrIdleInTransaction)
			assert.Contains(t, err.Error(), "idle_in_transaction_session_timeout is 1s")

			mu := sqllock.New(db, sqllock.WithKeepAlive(200*time.Millisecond, 300*time.Millisecond)).Mutex(t.Name())
			require.NoError(t, mu.Lock(t.Context()))
			select {
			case <-mu.Done():
				t.Fatalf("lost: %v", mu.Err())
			case <-time.After(2 * time.Second):
			}
			require.NoError(t, mu.Err(), "the keep-alive keeps the holding transaction from idling 1s")
			require.NoError(t, mu.Unlock(t.Context()))
		})
	}
}

// Behind a transaction pooler, Holders shows a held lock's session (its
// transaction idle between the holder's statements), and an Election
// hands over cleanly: its looks at pg_locks carry their keys in the text,
// which lib/pq sends in one round trip there.
func TestPgBouncerHoldersAndElection(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "transaction", 10, func(t *testing.T, db *sql.DB) {
		direct := pgtest.DB(t, "pgx") // the test's own looks, with parameters
		mu := sqllock.New(db).Mutex(t.Name() + "/holders")
		require.NoError(t, mu.Lock(t.Context()))
		hs, err := mu.Holders(t.Context())
		require.NoError(t, err)
		require.Len(t, hs, 1)
		assert.True(t, hs[0].Granted)
		assert.Equal(t, backendOf(t, direct, mu.Key()), hs[0].PID)
		assert.Equal(t, "idle in transaction", hs[0].State, "the holding transaction idles between statements")
		require.NoError(t, mu.Unlock(t.Context()))

		ts := &terms{t: t}
		cur := ts.campaign(db, t.Name())
		next(t, cur.started, 10*time.Second, "first leader")
		key := electionKey(cur.e)
		for i := range 3 {
			nxt := ts.campaign(db, t.Name())
			waitRows(t, direct, key, 1, 1)
			cur.stop()
			returned := next(t, cur.returned, 5*time.Second, "old fn's return")
			started := next(t, nxt.started, 5*time.Second, "new fn's start")
			require.ErrorIs(t, <-cur.done, context.Canceled)
			gap := started.Sub(returned)
			t.Logf("handover %d behind the pooler: %v", i+1, gap.Round(100*time.Microsecond))
			assert.Less(t, gap, hoDelay, "a clean handover skips the delay behind a pooler too")
			cur = nxt
		}
		cur.stop()
		require.ErrorIs(t, <-cur.done, context.Canceled)
		assertNoOpenTransactions(t, direct)
	})
}

// cancelSenders open the driver setups that send a cancel request when a
// context ends: lib/pq, and pgx with CancelRequestContextWatcherHandler
// (withlock's), in its exec mode, which a transaction pooler carries.
var cancelSenders = []struct {
	name string
	open func(t *testing.T, dsn string) *sql.DB
}{
	{"pq", func(t *testing.T, dsn string) *sql.DB {
		db, err := sql.Open("postgres", dsn)
		require.NoError(t, err)
		t.Cleanup(func() { db.Close() })
		return db
	}},
	{"pgx-cancelrequest", func(t *testing.T, dsn string) *sql.DB {
		return pgtest.OpenPgxCancelRequest(t, dsn+"&default_query_exec_mode=exec")
	}},
}

// Behind PgBouncer in transaction mode, a lock wait that its caller
// cancels sends the pooler no cancel request, even on pgx with
// CancelRequestContextWatcherHandler (withlock's), or lib/pq, which sends
// one whenever a context ends: PgBouncer before 1.21 can exit on one
// (pgbouncer/pgbouncer#822; the chaos run's pooler did, 2026-12-07). The
// wait is ended on the server instead, and nothing is left behind.
func TestPgBouncerCancelledWaitSendsNoCancelRequest(t *testing.T) {
	t.Parallel()
	for _, d := range cancelSenders {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			b := pgtest.NewBouncer(t, "transaction", 6)
			db := d.open(t, b.DSN())
			direct := pgtest.DB(t, "pgx")
			l := sqllock.New(db, sqllock.WithFencing())
			holder := l.Mutex(t.Name())
			require.NoError(t, holder.Lock(t.Context()))
			for i := range 8 {
				ctx, cancel := context.WithCancel(t.Context())
				if i%2 == 1 {
					ctx, cancel = context.WithTimeout(t.Context(), time.Hour) // a deadline far off, cancelled first
				}
				waiter := l.Mutex(t.Name())
				got := make(chan error, 1)
				go func() { got <- waiter.Lock(ctx) }()
				waitRows(t, direct, holder.Key(), 1, 1)
				cancel()
				require.ErrorIs(t, <-got, context.Canceled)
				waitRows(t, direct, holder.Key(), 1, 0)
			}
			require.NoError(t, holder.Unlock(t.Context()))
			waitRows(t, direct, holder.Key(), 0, 0)
			log, err := os.ReadFile(b.LogFile())
			require.NoError(t, err)
			assert.Zero(t, strings.Count(string(log), "started sending cancel request"), "cancel requests the pooler forwarded")
			exited, err := b.Exited()
			assert.False(t, exited, "the pooler exited: %v", err)
		})
	}
}

// A role whose default isolation is REPEATABLE READ (here the server's)
// would make a held transaction keep its first statement's snapshot for as
// long as it holds the lock, holding back VACUUM: sqllock begins held
// transactions READ COMMITTED there, alone and shared, fenced or not, and
// locks still exclude and wait.
func TestPgBouncerRepeatableReadDefault(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t, "default_transaction_isolation=repeatable read")
	direct := faultOpen(t, "pgx", c.DSN())
	b := pgtest.NewBouncerFor(t, c.DSN(), "transaction", 6)
	for _, d := range []struct{ name, driver, params string }{
		{"pq", "postgres", ""},
		{"pgx", "pgx", "&default_query_exec_mode=simple_protocol"},
		{"pq-binary", "postgres", "&binary_parameters=yes"},
		{"pgx-exec", "pgx", "&default_query_exec_mode=exec"},
	} {
		for _, mode := range []struct {
			name string
			opts []sqllock.Option
		}{
			{"alone", nil},
			{"fenced", []sqllock.Option{sqllock.WithFencing()}},
			{"sessions", []sqllock.Option{sqllock.WithSessions(2)}},
		} {
			t.Run(d.name+"/"+mode.name, func(t *testing.T) {
				db := faultOpen(t, d.driver, b.DSN()+d.params+"&application_name="+appName(t))
				l := sqllock.New(db, mode.opts...)
				a, b, other := l.Mutex(t.Name()+"/a"), l.Mutex(t.Name()+"/b"), sqllock.New(db).Mutex(t.Name()+"/a")
				require.NoError(t, a.Lock(t.Context()))
				require.NoError(t, b.Lock(t.Context()))
				for _, mu := range []*sqllock.Mutex{a, b} {
					var iso string
					var xid, xmin sql.NullString
					require.NoError(t, direct.QueryRowContext(t.Context(), `SELECT current_setting('default_transaction_isolation'),
						backend_xid::text, backend_xmin::text FROM pg_stat_activity WHERE pid = $1`, backendOf(t, direct, mu.Key())).Scan(&iso, &xid, &xmin))
					require.Equal(t, "repeatable read", iso)
					assert.False(t, xid.Valid, "the holding transaction has a transaction id: %s", xid.String)
					assert.False(t, xmin.Valid, "the holding transaction holds a snapshot: %s", xmin.String)
				}
				ok, err := other.TryLock(t.Context())
				require.NoError(t, err)
				assert.False(t, ok, "a held lock excludes")
				// A deadline: the server keeps it (lock_timeout) with the wait.
				wctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				got := make(chan error, 1)
				go func() { got <- other.Lock(wctx) }()
				waitRows(t, direct, a.Key(), 1, 1)
				require.NoError(t, a.Unlock(t.Context()))
				require.NoError(t, <-got, "the waiter gets the lock once it is free")
				require.NoError(t, other.Unlock(t.Context()))
				require.NoError(t, b.Unlock(t.Context()))
				waitRows(t, direct, a.Key(), 0, 0)
				waitRows(t, direct, b.Key(), 0, 0)
				assertNoOpenTransactions(t, direct)
			})
		}
	}
}

// A new client connection's check behind a pooler sends no cancel request
// when the caller's context ends while the pooler queues it (every server
// connection busy): PgBouncer before 1.21 can exit on one (pgbouncer#822).
// The call returns within its bound; the check's connection is discarded
// once the pooler answers, and nothing is left.
func TestPgBouncerCheckSendsNoCancelRequest(t *testing.T) {
	t.Parallel()
	for _, d := range cancelSenders {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			b := pgtest.NewBouncer(t, "transaction", 1)
			db := d.open(t, b.DSN()+"&application_name="+appName(t))
			db.SetMaxIdleConns(0) // every lock on a client connection new to sqllock
			l := sqllock.New(db)
			mu := l.Mutex(t.Name())
			require.NoError(t, mu.Lock(t.Context()))
			require.NoError(t, mu.Unlock(t.Context()))

			// Another client's transaction takes the pooler's one server
			// connection: the next check waits in the pooler's queue.
			other := faultOpen(t, "pgx", b.DSN()+"&default_query_exec_mode=exec&application_name="+appName(t))
			tx, err := other.BeginTx(t.Context(), nil)
			require.NoError(t, err)
			_, err = tx.ExecContext(t.Context(), "SELECT 1")
			require.NoError(t, err)
			for range 3 {
				ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
				start := time.Now()
				err = mu.Lock(ctx)
				cancel()
				require.ErrorIs(t, err, context.DeadlineExceeded)
				assert.Less(t, time.Since(start), session.AbandonGrace+settle.Bound+time.Second, "Lock returns within its bound")
			}
			require.NoError(t, tx.Rollback())
			require.NoError(t, mu.Lock(t.Context()))
			require.NoError(t, mu.Unlock(t.Context()))
			noConnsInUse(t, db)
			log, err := os.ReadFile(b.LogFile())
			require.NoError(t, err)
			assert.Zero(t, strings.Count(string(log), "cancel"), "cancel requests the pooler saw:\n%s", log)
			exited, err := b.Exited()
			assert.False(t, exited, "the pooler exited: %v", err)
			waitRows(t, pgtest.DB(t, "pgx"), mu.Key(), 0, 0)
			assertNoOpenTransactions(t, pgtest.DB(t, "pgx"))
		})
	}
}
