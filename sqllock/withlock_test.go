package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMockWithLockReleasesOnError(t *testing.T) {
	l, mock := newMock(t)
	expectLock(mock, 7)
	mock.ExpectExec(unlockSQL).WillReturnResult(unlocked(true))
	boom := errors.New("boom")
	err := l.MutexKey(keyspace.Int64(42)).WithLock(t.Context(), func(context.Context) error { return boom })
	require.Same(t, boom, err, "fn's error comes back as is")
}

func TestWithLock(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		mu := l.Mutex(t.Name())
		other := l.Mutex(t.Name())
		boom := errors.New("boom")

		err := mu.WithLock(t.Context(), func(ctx context.Context) error {
			ok, err := other.TryLock(ctx)
			require.NoError(t, err)
			assert.False(t, ok, "held during fn")
			return nil
		})
		require.NoError(t, err)
		waitRows(t, db, mu.Key(), 0, 0)

		err = mu.WithLock(t.Context(), func(context.Context) error { return boom })
		require.ErrorIs(t, err, boom)
		waitRows(t, db, mu.Key(), 0, 0)

		func() {
			defer func() {
				assert.Equal(t, "user panic", recover(), "the panic goes on")
			}()
			_ = mu.WithLock(t.Context(), func(context.Context) error { panic("user panic") })
		}()
		waitRows(t, db, mu.Key(), 0, 0)

		err = mu.WithLockShared(t.Context(), func(ctx context.Context) error {
			ok, err := other.TryLockShared(ctx)
			require.NoError(t, err)
			assert.True(t, ok, "shared coexists")
			return other.UnlockShared(ctx)
		})
		require.NoError(t, err)
		assert.Equal(t, 0, inUse(db))

		// A context cancelled inside fn does not keep the lock.
		ctx, cancel := context.WithCancel(t.Context())
		err = mu.WithLock(ctx, func(context.Context) error { cancel(); return nil })
		require.NoError(t, err)
		waitRows(t, db, mu.Key(), 0, 0)
	})
}

func TestTryWithLock(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		mu, other := l.Mutex(t.Name()), l.Mutex(t.Name())
		ran := false
		ok, err := mu.TryWithLock(t.Context(), func(ctx context.Context) error {
			ran = true
			inner, err := other.TryWithLockShared(ctx, func(context.Context) error {
				t.Error("fn ran while the lock was held exclusively")
				return nil
			})
			assert.False(t, inner)
			return err
		})
		require.NoError(t, err)
		assert.True(t, ok)
		assert.True(t, ran)
		waitRows(t, db, mu.Key(), 0, 0)
		assert.Equal(t, 0, inUse(db))
	})
}

// Inside WithLock's function, the Mutex describes the lock it holds, as
// after Lock: Done open, Err nil; afterwards, Done closed and ErrNotHeld.
func TestDoneAndErrInsideWithLock(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		inside := func(ctx context.Context) error {
			select {
			case <-mu.Done():
				t.Errorf("Done closed inside fn (Err: %v), want open while the lock is held", mu.Err())
			default:
			}
			assert.NoError(t, mu.Err(), "Err inside fn")
			return nil
		}
		require.NoError(t, mu.WithLock(t.Context(), inside))
		ok, err := mu.TryWithLock(t.Context(), inside)
		require.NoError(t, err)
		require.True(t, ok)
		require.NoError(t, mu.WithLockShared(t.Context(), inside))
		select {
		case <-mu.Done():
		default:
			t.Error("Done open after WithLock returned, want closed")
		}
		require.ErrorIs(t, mu.Err(), sqllock.ErrNotHeld)
		require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrNotHeld, "WithLock's hold is gone from the Mutex")
	})
}

// MaxWait bounds the wait alone: fn runs past it, and a wait that ends is
// an ErrNotAcquired error naming the lock, distinct from fn's errors.
func TestWithLockMaxWait(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		holder, mu := l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, holder.Lock(t.Context()))
		ran := false
		start := time.Now()
		err := mu.WithLock(t.Context(), func(context.Context) error { ran = true; return nil }, sqllock.MaxWait(50*time.Millisecond))
		assert.False(t, ran, "fn ran without the lock")
		require.ErrorIs(t, err, sqllock.ErrNotAcquired)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		var se *sqllock.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, "withlock", se.Op)
		assert.Contains(t, err.Error(), t.Name())
		assert.Less(t, time.Since(start), 5*time.Second)
		held, waiting := lockRows(t, db, holder.Key())
		assert.Equal(t, [2]int{1, 0}, [2]int{held, waiting}, "the bounded wait left nothing waiting")
		require.NoError(t, holder.Unlock(t.Context()))

		// Granted: fn outlives the wait bound, its context untouched.
		err = mu.WithLock(t.Context(), func(ctx context.Context) error {
			select {
			case <-ctx.Done():
				return fmt.Errorf("fn's context ended: %w", context.Cause(ctx))
			case <-time.After(150 * time.Millisecond):
			}
			return nil
		}, sqllock.MaxWait(50*time.Millisecond))
		require.NoError(t, err)

		// fn's own failure is not ErrNotAcquired.
		boom := errors.New("job failed")
		err = mu.WithLock(t.Context(), func(context.Context) error { return boom }, sqllock.MaxWait(time.Second))
		require.ErrorIs(t, err, boom)
		require.NotErrorIs(t, err, sqllock.ErrNotAcquired)

		err = mu.WithLock(t.Context(), func(context.Context) error { return nil }, sqllock.MaxWait(0))
		require.ErrorContains(t, err, "MaxWait(0s)")
		assert.Contains(t, err.Error(), t.Name())
		err = mu.WithLock(t.Context(), func(context.Context) error { return nil }, nil)
		require.ErrorContains(t, err, "nil WithLockOption")
	})
}

// An Unlock releases what Lock took, never WithLock's lock: a Mutex shared
// between WithLockShared and LockShared/UnlockShared keeps fn's lock held
// while fn runs, and leaves nothing behind (found in review: UnlockShared
// released fn's hold, and its own lock stayed held with its connection).
func TestUnlockLeavesWithLockAlone(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		err := mu.WithLockShared(t.Context(), func(ctx context.Context) error {
			if err := mu.LockShared(ctx); err != nil {
				return err
			}
			if err := mu.UnlockShared(ctx); err != nil {
				return err
			}
			held, _ := lockRows(t, db, mu.Key())
			assert.Equal(t, 1, held, "fn's shared lock is still held")
			require.ErrorIs(t, mu.UnlockShared(ctx), sqllock.ErrNotHeld, "fn's lock is not Unlock's to release")
			return ctx.Err()
		})
		require.NoError(t, err)
		held, waiting := lockRows(t, db, mu.Key())
		assert.Equal(t, [2]int{0, 0}, [2]int{held, waiting})
		assert.Zero(t, db.Stats().InUse, "every connection back in the pool")
	})
}

// WithLock after a loss: fn's own error comes back wrapped with the loss
// (errors.Is finds both), and fn returning its context's cause, the loss
// itself, is not said twice.
func TestWithLockLossAndFnError(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		errFn := errors.New("fn failed")
		for _, returned := range []string{"cause", "own"} {
			m := sqllock.New(db, fastLoss).Mutex(t.Name() + "/" + returned)
			err := m.WithLock(t.Context(), func(ctx context.Context) error {
				terminate(t, db, backendOf(t, db, m.Key()))
				<-ctx.Done()
				if returned == "cause" {
					return context.Cause(ctx)
				}
				return errFn
			})
			t.Logf("%s: %v", returned, err)
			require.ErrorIs(t, err, sqllock.ErrLockLost)
			require.NotErrorIs(t, err, sqllock.ErrNoAnswer, "a terminated backend answered: no bound of sqllock's ended anything")
			if returned == "own" {
				require.ErrorIs(t, err, errFn)
				continue
			}
			assert.NotContains(t, err.Error(), "and fn returned", "the loss is said once")
		}
	})
}
