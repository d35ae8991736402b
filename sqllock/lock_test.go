package sqllock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMockLockUnlockSQL(t *testing.T) {
	l, mock := newMock(t)
	expectLock(mock, 7)
	mock.ExpectExec(unlockSQL).WithoutArgs().WillReturnResult(unlocked(true))
	mock.ExpectQuery(guardedSQL(q42.Lock, 7)).WithoutArgs().WillReturnRows(granted(true))
	mock.ExpectExec(unlockSQL).WithoutArgs().WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Int64(42))
	for range 2 { // the second lock needs no verify
		require.NoError(t, mu.Lock(t.Context()))
		require.NoError(t, mu.Unlock(t.Context()))
	}
}

func TestMockSharedAndPairSQL(t *testing.T) {
	l, mock := newMock(t)
	q := sqltext.Build(keyspace.Pair(1, -2), false)
	mock.ExpectQuery(verifySQL).WillReturnRows(verified(7, 0))
	mock.ExpectQuery(guardedSQL(q.TryShared, 7)).WillReturnRows(granted(true))
	mock.ExpectExec(guardedSQL(q.UnlockShared, 7)).WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Pair(1, -2))
	ok, err := mu.TryLockShared(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, mu.UnlockShared(t.Context()))
}

func TestMockPlaceholderSQL(t *testing.T) {
	l, mock := newMock(t, sqllock.WithPlaceholders(true))
	q := sqltext.Build(keyspace.Pair(3, 4), true)
	mock.ExpectQuery(sqltext.BuildVerify(true, false).TextWith("TOKEN")).WithArgs(ownerTokenArg{}).WillReturnRows(verified(7, 0))
	mock.ExpectQuery(guardedSQL(q.LockShared, 7)).WithArgs(int64(3), int64(4)).WillReturnRows(granted(true))
	mock.ExpectExec(guardedSQL(q.UnlockShared, 7)).WithArgs(int64(3), int64(4)).WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Pair(3, 4))
	require.NoError(t, mu.LockShared(t.Context()))
	require.NoError(t, mu.UnlockShared(t.Context()))
}

func TestMockTryLockContended(t *testing.T) {
	l, mock := newMock(t)
	mock.ExpectQuery(verifySQL).WillReturnRows(verified(7, 0))
	mock.ExpectQuery(guardedSQL(q42.Try, 7)).WillReturnRows(granted(false))
	ok, err := l.MutexKey(keyspace.Int64(42)).TryLock(t.Context())
	require.NoError(t, err)
	assert.False(t, ok, "contention is not an error")
}

// A pooled connection whose session the server ended fails its statement
// with driver.ErrBadConn; the lock is taken on another connection.
func TestFakeDeadPooledSessionRetried(t *testing.T) {
	var calls atomic.Int32
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if calls.Add(1) == 1 {
			return nil, driver.ErrBadConn
		}
		return answerAs(q, 7), nil
	}, sqllock.WithKeepAlive(0, 0))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	assert.Equal(t, int32(3), calls.Load(), "a failed session check, then a check and a lock")
	assert.Equal(t, int32(1), c.Closed.Load(), "the dead connection is discarded")
}

func TestLockPinsConnection(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		base := inUse(db)
		require.NoError(t, mu.Lock(t.Context()))
		assert.Equal(t, base+1, inUse(db), "a held lock pins one connection")
		require.NoError(t, mu.Err())
		held, _ := lockRows(t, db, mu.Key())
		assert.Equal(t, 1, held)
		require.NoError(t, mu.Unlock(t.Context()))
		assert.Equal(t, base, inUse(db), "unlock returns the connection")
		held, _ = lockRows(t, db, mu.Key())
		assert.Equal(t, 0, held)
		assert.ErrorIs(t, mu.Err(), sqllock.ErrNotHeld)
	})
}

func TestExclusionInOneProcess(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		a, b := l.Mutex(t.Name()), l.Mutex(t.Name())
		ok, err := a.TryLock(t.Context())
		require.NoError(t, err)
		require.True(t, ok)

		ok, err = b.TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "a second Mutex for the same name must not get the lock")
		ok, err = a.TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "the same Mutex locked twice must not get the lock twice")
		ok, err = b.TryLockShared(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "shared must wait for exclusive")

		require.NoError(t, a.Unlock(t.Context()))
		ok, err = b.TryLock(t.Context())
		require.NoError(t, err)
		assert.True(t, ok)
		require.NoError(t, b.Unlock(t.Context()))
	})
}

func TestSharedCoexistsAndExcludes(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		a, b, c := l.Mutex(t.Name()), l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, a.LockShared(t.Context()))
		require.NoError(t, b.LockShared(t.Context()))
		ok, err := a.TryLockShared(t.Context())
		require.NoError(t, err)
		require.True(t, ok, "shared holders coexist, also within one Mutex")

		ok, err = c.TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "exclusive must wait for shared")

		// An exclusive waiter is granted once every shared holder is gone.
		got := make(chan error, 1)
		go func() { got <- c.Lock(t.Context()) }()
		waitRows(t, db, a.Key(), 3, 1)
		require.NoError(t, a.UnlockShared(t.Context()))
		require.NoError(t, a.UnlockShared(t.Context()))
		require.NoError(t, b.UnlockShared(t.Context()))
		require.NoError(t, <-got)
		waitRows(t, db, a.Key(), 1, 0)
		require.NoError(t, c.Unlock(t.Context()))
	})
}

func TestWaiterGrantedOnRelease(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		holder, waiter := l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, holder.Lock(t.Context()))
		got := make(chan error, 1)
		go func() { got <- waiter.Lock(t.Context()) }()
		waitRows(t, db, holder.Key(), 1, 1) // the waiter waits in the server
		select {
		case err := <-got:
			t.Fatalf("waiter returned while the lock was held: %v", err)
		default:
		}
		require.NoError(t, holder.Unlock(t.Context()))
		require.NoError(t, <-got)
		require.NoError(t, waiter.Unlock(t.Context()))
	})
}

func TestExplicitKeysAtTheEdges(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		for _, k := range []keyspace.Key{
			keyspace.Int64(-9223372036854775808), keyspace.Int64(9223372036854775807),
			keyspace.Pair(-2147483648, 2147483647), keyspace.Pair(-2147483648, -2147483648),
		} {
			mu := l.MutexKey(k)
			require.NoError(t, mu.Lock(t.Context()), "%v", k)
			held, _ := lockRows(t, db, k)
			assert.Equal(t, 1, held, "pg_locks shows %v where LockTag says", k)
			require.NoError(t, mu.Unlock(t.Context()))
		}
	})
}

// A second shared holder on a shared session asks pg_locks whether anyone
// waits for the key, in SQL that takes the key as parameters or as
// literals: at the edges too. The drivers take turns (the keys are the
// same for all), and the test runs apart from TestExplicitKeysAtTheEdges,
// whose exclusive locks would queue as waiters.
func TestSharedHoldersAtTheEdges(t *testing.T) {
	for _, s := range setups {
		db := s.open(t)
		for _, opts := range [][]sqllock.Option{{sqllock.WithSessions(1)}, {sqllock.WithSessions(1), sqllock.WithLiterals}} {
			l := sqllock.New(db, opts...)
			for _, k := range []keyspace.Key{
				keyspace.Int64(-9223372036854775808), keyspace.Int64(9223372036854775807),
				keyspace.Pair(-2147483648, 5), keyspace.Pair(5, -2147483648),
			} {
				a, b := l.MutexKey(k), l.MutexKey(k)
				require.NoError(t, a.LockShared(t.Context()), "%s %v", s.name, k)
				ok, err := b.TryLockShared(t.Context())
				require.NoError(t, err, "%s %v", s.name, k)
				require.True(t, ok, "%s %v", s.name, k)
				require.NoError(t, b.UnlockShared(t.Context()))
				require.NoError(t, a.UnlockShared(t.Context()))
			}
		}
	}
}

// A Lock that picks a pooled connection whose session the server has just
// ended retries on another connection, whatever error the driver gives
// for it: lib/pq's "connection reset by peer" and pgx's "unexpected EOF"
// failed such Locks before (issue 14: 104 of 150 rounds on lib/pq).
func TestLockRetriesDeadPooledSession(t *testing.T) {
	rounds := 100
	if testing.Short() {
		rounds = 30
	}
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		db.SetMaxIdleConns(1)
		l := sqllock.New(db)
		admin := pgtest.DB(t, "pgx")
		for round := range rounds {
			mu := l.Mutex(t.Name())
			require.NoError(t, mu.Lock(t.Context()), "round %d: first Lock", round)
			pid := backendOf(t, admin, mu.Key())
			require.NoError(t, mu.Unlock(t.Context()))
			terminate(t, admin, pid) // the pooled connection's session ends
			time.Sleep(time.Duration(rand.IntN(800)) * time.Microsecond)
			require.NoError(t, mu.Lock(t.Context()), "round %d: Lock after the pooled session %d was terminated", round, pid)
			require.NoError(t, mu.Unlock(t.Context()))
		}
	})
}

// A lock name is hashed into integers: whatever it contains never reaches
// the SQL text.
func TestLockNameNeverInSQL(t *testing.T) {
	db, mock, err := sqlmock.New(sqlmock.QueryMatcherOption(sqlmock.QueryMatcherFunc(func(_, actual string) error {
		if strings.Contains(actual, "DROP") || strings.Contains(actual, "evil") {
			return fmt.Errorf("the lock name reached SQL: %s", actual)
		}
		return nil
	})))
	require.NoError(t, err)
	defer db.Close()
	mock.ExpectQuery("").WillReturnRows(sqlmock.NewRows([]string{"answer"}).AddRow(int64(1 << 5)))
	mock.ExpectQuery("").WillReturnRows(sqlmock.NewRows([]string{"granted"}).AddRow(true))
	mock.ExpectExec("").WillReturnResult(sqlmock.NewResult(0, 1))
	mu := sqllock.New(db, sqllock.WithKeepAlive(0, 0)).Mutex("evil'); DROP TABLE users; --")
	require.NoError(t, mu.Lock(context.Background()))
	require.NoError(t, mu.Unlock(context.Background()))
	require.NoError(t, mock.ExpectationsWereMet())
}
