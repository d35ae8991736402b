package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// WithSessions behind a transaction pooler: each of the n sessions is a
// client connection that carries its locks in a transaction it holds open
// while it carries any (sqllock/internal/session/heldmux.go).

// heldSessions returns, for each backend that holds one of keys, its state
// in pg_stat_activity, its transaction id and its snapshot's xmin (both
// NULL while it idles in its transaction), and how many of keys it holds.
type heldSession struct {
	state     string
	xid, xmin sql.NullString
	locks     int
}

func heldSessions(t *testing.T, direct *sql.DB, keys []keyspace.Key) map[int64]*heldSession {
	t.Helper()
	out := map[int64]*heldSession{}
	for _, k := range keys {
		c, o, s := k.LockTag()
		rows, err := direct.QueryContext(t.Context(), `SELECT l.pid, a.state, a.backend_xid::text, a.backend_xmin::text
			FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1 AND l.objid = $2 AND l.objsubid = $3`,
			int64(c), int64(o), int64(s))
		require.NoError(t, err)
		for rows.Next() {
			var pid int64
			var h heldSession
			require.NoError(t, rows.Scan(&pid, &h.state, &h.xid, &h.xmin))
			if out[pid] == nil {
				out[pid] = &h
			}
			out[pid].locks++
		}
		require.NoError(t, rows.Err())
		rows.Close()
	}
	return out
}

// Many locks on n sessions behind a transaction pooler: they sit on at
// most n server sessions, each idle in a transaction with no transaction
// id and no snapshot; they exclude other clients and each other, shared
// locks share, a contended lock waits in the server, a cancelled wait
// leaves nothing, Holders shows them, and once all are unlocked no server
// session carries a lock or an open transaction.
func TestPgBouncerSessionsLocks(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "transaction", 8, func(t *testing.T, db *sql.DB) {
		ctx := t.Context()
		direct := pgtest.DB(t, "pgx")
		l := sqllock.New(db, sqllock.WithSessions(2))
		ms := make([]*sqllock.Mutex, 40)
		keys := make([]keyspace.Key, len(ms))
		for i := range ms {
			ms[i] = l.Mutex(fmt.Sprintf("%s/%d", t.Name(), i))
			keys[i] = ms[i].Key()
			require.NoError(t, ms[i].Lock(ctx))
		}
		sessions := heldSessions(t, direct, keys)
		assert.LessOrEqual(t, len(sessions), 2, "40 locks on at most two server sessions")
		total := 0
		for pid, s := range sessions {
			assert.Equal(t, "idle in transaction", s.state, "backend %d", pid)
			assert.False(t, s.xid.Valid, "backend %d's transaction has an id: %s", pid, s.xid.String)
			assert.False(t, s.xmin.Valid, "backend %d's transaction keeps a snapshot: %s", pid, s.xmin.String)
			total += s.locks
		}
		assert.Equal(t, len(ms), total)

		// Exclusion: this Locker's other holders, another client's.
		ok, err := l.Mutex(t.Name() + "/0").TryLock(ctx)
		require.NoError(t, err)
		assert.False(t, ok, "a held lock excludes the Locker's own other holders")
		other := sqllock.New(db)
		ok, err = other.Mutex(t.Name() + "/0").TryLockShared(ctx)
		require.NoError(t, err)
		assert.False(t, ok, "a held lock excludes another client")
		otherSessions := sqllock.New(db, sqllock.WithSessions(1))
		ok, err = otherSessions.Mutex(t.Name() + "/1").TryLock(ctx)
		require.NoError(t, err)
		assert.False(t, ok, "a held lock excludes another client's shared sessions")

		// A cancelled wait leaves nothing; a wait is in the server.
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		err = l.Mutex(t.Name() + "/2").Lock(short) // waits in this process
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)
		short, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
		err = otherSessions.Mutex(t.Name() + "/2").Lock(short) // waits in the server
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)
		waitRows(t, direct, keys[2], 1, 0)
		waiter := otherSessions.Mutex(t.Name() + "/3")
		got := make(chan error, 1)
		go func() { got <- waiter.Lock(ctx) }()
		waitRows(t, direct, keys[3], 1, 1)

		hs, err := ms[3].Holders(ctx)
		require.NoError(t, err)
		require.Len(t, hs, 2)
		assert.True(t, hs[0].Granted)
		assert.Equal(t, "idle in transaction", hs[0].State)
		assert.False(t, hs[1].Granted)

		require.NoError(t, ms[3].Unlock(ctx))
		require.NoError(t, <-got, "the waiter gets the lock when its holder lets go")
		require.NoError(t, waiter.Unlock(ctx))

		// Shared locks share, within the Locker and across clients.
		for i := range ms {
			if i != 3 {
				require.NoError(t, ms[i].Unlock(ctx))
			}
		}
		waitRows(t, direct, keys[0], 0, 0)
		a, b := l.Mutex(t.Name()+"/0"), l.Mutex(t.Name()+"/0")
		require.NoError(t, a.LockShared(ctx))
		ok, err = b.TryLockShared(ctx)
		require.NoError(t, err)
		assert.True(t, ok, "shared locks share on one Locker")
		c := otherSessions.Mutex(t.Name() + "/0")
		require.NoError(t, c.LockShared(ctx))
		waitRows(t, direct, keys[0], 3, 0)
		ok, err = other.Mutex(t.Name() + "/0").TryLock(ctx)
		require.NoError(t, err)
		assert.False(t, ok, "shared holders exclude an exclusive one")
		require.NoError(t, a.UnlockShared(ctx))
		require.NoError(t, b.UnlockShared(ctx))
		require.NoError(t, c.UnlockShared(ctx))

		for _, k := range keys {
			waitRows(t, direct, k, 0, 0)
		}
		assertNoOpenTransactions(t, direct)
	})
}

// Fenced locks on n sessions behind a transaction pooler: each exclusive
// grant's token is larger than the one before, drawn on another session,
// so that the transaction that carries the locks never gets an id.
func TestPgBouncerSessionsFencing(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "transaction", 6, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db, sqllock.WithSessions(2), sqllock.WithFencing())
		direct := pgtest.DB(t, "pgx")
		var last uint64
		var ms []*sqllock.Mutex
		var keys []keyspace.Key
		for i := range 6 {
			mu := l.Mutex(fmt.Sprintf("%s/%d", t.Name(), i%3))
			if i >= 3 {
				require.NoError(t, ms[i-3].Unlock(t.Context()))
			}
			require.NoError(t, mu.Lock(t.Context()))
			token, ok := mu.Token()
			require.True(t, ok)
			assert.Greater(t, token, last, "each grant's token is larger than the one before")
			last = token
			ms = append(ms, mu)
			keys = append(keys, mu.Key())
		}
		for pid, s := range heldSessions(t, direct, keys) {
			assert.False(t, s.xid.Valid, "backend %d's transaction has an id: %s", pid, s.xid.String)
			assert.False(t, s.xmin.Valid, "backend %d's transaction keeps a snapshot: %s", pid, s.xmin.String)
		}
		for _, mu := range ms[3:] {
			require.NoError(t, mu.Unlock(t.Context()))
		}
		assertNoOpenTransactions(t, direct)
	})
}

// A storm of locks on n sessions behind a transaction pooler, under random
// deadlines: several keys, exclusive and shared, from one Locker's workers
// and from another client: never two holders of a key where one is
// exclusive, and once every call has returned nothing is left in pg_locks
// and no server session is left in a transaction.
func TestPgBouncerSessionsStorm(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "transaction", 20, func(t *testing.T, db *sql.DB) {
		db.SetMaxIdleConns(8)
		const nkeys = 4
		sessions := sqllock.New(db, sqllock.WithSessions(3))
		plain := sqllock.New(db) // another client: each lock in a transaction of its own
		var mu sync.Mutex
		holders, exclusive := make([]int, nkeys), make([]bool, nkeys)
		grants := 0
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(w), 11))
				l := sessions
				if w >= 6 {
					l = plain
				}
				for range 60 {
					k := rng.IntN(nkeys)
					m := l.Mutex(fmt.Sprintf("%s/%d", t.Name(), k))
					shared := rng.IntN(3) == 0
					ctx, cancel := context.WithTimeout(t.Context(), deadline(rng))
					var err error
					switch {
					case shared && rng.IntN(2) == 0:
						var ok bool
						if ok, err = m.TryLockShared(ctx); err == nil && !ok {
							cancel()
							continue
						}
					case shared:
						err = m.LockShared(ctx)
					default:
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
					if exclusive[k] || !shared && holders[k] > 0 {
						t.Errorf("two holders of key %d at once, one of them exclusive", k)
					}
					holders[k]++
					exclusive[k] = !shared
					grants++
					mu.Unlock()
					time.Sleep(time.Duration(rng.IntN(500)) * time.Microsecond)
					mu.Lock()
					holders[k]--
					exclusive[k] = false
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
		last := sessions.Mutex(t.Name() + "/0")
		require.NoError(t, last.Lock(t.Context()))
		require.NoError(t, last.Unlock(t.Context()))
		direct := pgtest.DB(t, "pgx")
		for k := range nkeys {
			held, waiting := lockRows(t, direct, sessions.Mutex(fmt.Sprintf("%s/%d", t.Name(), k)).Key())
			assert.Zero(t, held+waiting, "key %d: locks left in pg_locks once every call returned", k)
		}
		assertNoOpenTransactions(t, direct)
	})
}

// A server session that carries many locks behind a transaction pooler,
// terminated: every lock it carried is reported lost, and no other; the
// others are released as usual, and the lost ones can be taken again.
func TestPgBouncerSessionsTerminated(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "transaction", 6, func(t *testing.T, db *sql.DB) {
		direct := pgtest.DB(t, "pgx")
		l := sqllock.New(db, sqllock.WithSessions(2), fastLoss)
		ms := make([]*sqllock.Mutex, 10)
		keys := make([]keyspace.Key, len(ms))
		for i := range ms {
			ms[i] = l.Mutex(fmt.Sprintf("%s/%d", t.Name(), i))
			keys[i] = ms[i].Key()
			require.NoError(t, ms[i].Lock(t.Context()))
		}
		sessions := heldSessions(t, direct, keys)
		require.Len(t, sessions, 2, "two sessions carry the locks")
		owner := make([]int64, len(keys))
		for i, k := range keys {
			owner[i] = backendOf(t, direct, k)
		}
		victim := owner[0]
		terminate(t, direct, victim)
		var lost, kept int
		for i, m := range ms {
			if owner[i] == victim {
				select {
				case <-m.Done():
				case <-time.After(10 * time.Second):
					t.Fatalf("lock %d on the terminated session: Done still open", i)
				}
				require.ErrorIs(t, m.Err(), sqllock.ErrLockLost)
				require.ErrorIs(t, m.Unlock(t.Context()), sqllock.ErrLockLost)
				waitRows(t, direct, keys[i], 0, 0)
				lost++
				continue
			}
			require.NoError(t, m.Err(), "lock %d on the other session is unaffected", i)
			kept++
		}
		assert.Equal(t, sessions[victim].locks, lost)
		assert.Positive(t, kept)
		for i, m := range ms {
			if owner[i] == victim {
				require.NoError(t, m.Lock(t.Context()), "a lost lock is taken again")
			}
			require.NoError(t, m.Unlock(t.Context()))
		}
		for _, k := range keys {
			waitRows(t, direct, k, 0, 0)
		}
		assertNoOpenTransactions(t, direct)
	})
}

// A full lock table behind a transaction pooler refuses one lock on n
// sessions and loses none: the statement's error aborts the transaction
// that carries the others, which goes back to its savepoint with every
// session lock it holds.
func TestPgBouncerSessionsLockTableFull(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t, "max_locks_per_transaction=10", "max_connections=20")
	for _, d := range []struct{ name, driver, params string }{
		{"pq", "postgres", ""},
		{"pgx", "pgx", "&default_query_exec_mode=exec"},
	} {
		t.Run(d.name, func(t *testing.T) {
			b := pgtest.NewBouncerFor(t, c.DSN(), "transaction", 4)
			db, err := sql.Open(d.driver, b.DSN()+d.params)
			require.NoError(t, err)
			t.Cleanup(func() { db.Close() })
			l := sqllock.New(db, sqllock.WithSessions(1), fastLoss)
			held := make([]*sqllock.Mutex, 3)
			for i := range held {
				held[i] = l.Mutex(fmt.Sprintf("%s/held/%d", t.Name(), i))
				require.NoError(t, held[i].Lock(t.Context()))
			}
			directDB, err := sql.Open("pgx", c.DSN())
			require.NoError(t, err)
			t.Cleanup(func() { directDB.Close() })
			filler, err := directDB.Conn(t.Context())
			require.NoError(t, err)
			t.Logf("the lock table took %d advisory locks", fillLockTable(t, filler))

			m := l.Mutex(t.Name() + "/refused")
			ok, err := m.TryLock(t.Context())
			require.Error(t, err)
			assert.False(t, ok)
			assert.Contains(t, err.Error(), "max_locks_per_transaction")
			time.Sleep(100 * time.Millisecond) // a few keep-alive probes
			for i, h := range held {
				require.NoError(t, h.Err(), "lock %d survives the refusal on its session", i)
			}

			_, err = filler.ExecContext(t.Context(), "SELECT pg_advisory_unlock_all()")
			require.NoError(t, err)
			require.NoError(t, filler.Close())
			require.NoError(t, m.Lock(t.Context()), "room again")
			var same bool
			require.NoError(t, directDB.QueryRowContext(t.Context(), `SELECT count(DISTINCT pid) = 1 FROM pg_locks WHERE locktype = 'advisory'`).Scan(&same))
			assert.True(t, same, "on the same session as the others")
			require.NoError(t, m.Unlock(t.Context()))
			for _, h := range held {
				require.NoError(t, h.Unlock(t.Context()))
			}
			var left, inTx int
			require.NoError(t, directDB.QueryRowContext(t.Context(), "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").Scan(&left))
			assert.Zero(t, left, "nothing leaked")
			require.NoError(t, directDB.QueryRowContext(t.Context(), "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'").Scan(&inTx))
			assert.Zero(t, inTx, "no server session left in a transaction")
		})
	}
}

// A holder process with locks on n sessions behind a transaction pooler,
// killed (SIGKILL) or frozen (SIGSTOP), loses them: the pooler ends the
// killed client's transaction at once, and the frozen one's idles into
// its lease.
func TestPgBouncerSessionsHolderStops(t *testing.T) {
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
				b := pgtest.NewBouncer(t, "transaction", 6)
				dsn := b.DSN() + d.params
				cmd, lines := startHolder(t, d.driver+" "+dsn+" sessions:"+t.Name())
				require.Equal(t, "locked", <-lines)
				db, err := sql.Open(d.driver, dsn)
				require.NoError(t, err)
				t.Cleanup(func() { db.Close() })
				direct := pgtest.DB(t, "pgx")
				next := sqllock.New(db).Mutex(t.Name())
				ok, err := next.TryLock(t.Context())
				require.NoError(t, err)
				require.False(t, ok, "the holder holds the lock through the pooler")
				others := make([]keyspace.Key, holderSessionLocks)
				for i := range others {
					others[i] = sqllock.New(db).Mutex(fmt.Sprintf("%s/%d", t.Name(), i)).Key()
					waitRows(t, direct, others[i], 1, 0)
				}

				require.NoError(t, cmd.Process.Signal(stop.signal))
				stopped := time.Now()
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				defer cancel()
				require.NoError(t, next.Lock(ctx), "the stopped holder's lock was not freed")
				took := time.Since(stopped)
				t.Logf("through PgBouncer (transaction mode), WithSessions, driver %s: another client got the lock %v after the holder was %s", d.name, took.Round(time.Millisecond), stop.name)
				assert.Less(t, took, stop.within)
				for _, k := range others {
					waitRows(t, direct, k, 0, 0)
				}
				require.NoError(t, next.Unlock(t.Context()))
				waitRows(t, direct, next.Key(), 0, 0)
			})
		}
	}
}

// The statements of a multiplexed session's held transaction, sent where
// that transaction is not (a later transaction of its backend, or none),
// take nothing, free nothing and end nothing: the try answers no row, the
// unlock and the end fail before their pg_advisory_unlock_all and
// ROLLBACK. In it, they do what they say.
func TestHeldTxStatementsOutsideTheirTransaction(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := pgtest.DB(t, "postgres") // statements without parameters: the simple protocol
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	k := keyspace.Int64(7_700_002) // 7_700_001: a session lock the session keeps throughout
	h := sqltext.BuildHeld(k, 0)
	held := func() (n int) {
		require.NoError(t, conn.QueryRowContext(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()").Scan(&n))
		return n
	}
	_, err = conn.ExecContext(ctx, "SELECT pg_advisory_lock(7700001)")
	require.NoError(t, err)

	// x names a transaction that has ended.
	_, err = conn.ExecContext(ctx, sqltext.BeginRCSQL)
	require.NoError(t, err)
	var answer string
	require.NoError(t, conn.QueryRowContext(ctx, sqltext.First("", h.First, false)[0]).Scan(&answer))
	pid, granted, start, err := sqltext.HeldAnswer(answer)
	require.NoError(t, err)
	require.True(t, granted)
	x := sqltext.InHeldTx(pid, start)
	var ok bool
	require.NoError(t, conn.QueryRowContext(ctx, x.Try(sqltext.BuildHeld(keyspace.Int64(7_700_003), 0).In)).Scan(&ok))
	require.True(t, ok, "in its transaction, a later try takes its lock")
	require.Equal(t, 3, held())
	var n int
	require.NoError(t, conn.QueryRowContext(ctx, x.Unlock(h.Unlock, false, false)[0]).Scan(&n))
	require.Equal(t, 1, n, "in its transaction, an unlock releases its lock")
	require.NoError(t, conn.QueryRowContext(ctx, x.End(false)[0]).Scan(&n))
	require.Equal(t, 0, held(), "the end frees every session lock")
	_, err = conn.ExecContext(ctx, "SAVEPOINT probe")
	require.ErrorContains(t, err, "can only be used in transaction blocks", "the end ends the transaction")
	_, err = conn.ExecContext(ctx, "SELECT pg_advisory_lock(7700001)")
	require.NoError(t, err)

	for _, where := range []string{"no transaction", "a later transaction"} {
		if where == "a later transaction" {
			_, err = conn.ExecContext(ctx, sqltext.BeginRCSQL)
			require.NoError(t, err)
		}
		err = conn.QueryRowContext(ctx, x.Try(h.In)).Scan(&ok)
		require.ErrorIs(t, err, sql.ErrNoRows, "%s: the try takes nothing", where)
		assert.Equal(t, 1, held(), where)
		for _, q := range [][]string{x.Unlock(h.Unlock, true, false), x.End(false)} {
			err = conn.QueryRowContext(ctx, q[0]).Scan(&n)
			require.ErrorContains(t, err, "is not in the transaction that holds its locks", where)
			if where == "a later transaction" {
				_, err = conn.ExecContext(ctx, "ROLLBACK") // the test's, of the aborted transaction
				require.NoError(t, err)
				assert.Equal(t, 1, held(), "%s: nothing freed", where)
				_, err = conn.ExecContext(ctx, sqltext.BeginRCSQL)
				require.NoError(t, err)
			}
			assert.Equal(t, 1, held(), "%s: nothing freed", where)
		}
		if where == "a later transaction" {
			_, err = conn.ExecContext(ctx, "ROLLBACK")
			require.NoError(t, err)
		}
	}
	_, err = conn.ExecContext(ctx, "SELECT pg_advisory_unlock_all()")
	require.NoError(t, err)
}
