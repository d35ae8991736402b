package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// tryWithLock is what Mutex.WithLock would be with --try, which sqllock does
// not offer: it takes the lock only if it is free, and reports false
// otherwise. Having taken it, it behaves as WithLock: fn's context is
// cancelled with a cause wrapping sqllock.ErrLockLost if the lock is lost,
// the lock is released however fn ends (bounded by releaseTimeout), and the
// result wraps ErrLockLost if the lock was lost, even when fn returned nil.
func tryWithLock(ctx context.Context, mu *sqllock.Mutex, shared bool, releaseTimeout time.Duration, fn func(context.Context) error) (acquired bool, err error) {
	try, unlock := mu.TryLock, mu.Unlock
	if shared {
		try, unlock = mu.TryLockShared, mu.UnlockShared
	}
	ok, err := try(ctx)
	if err != nil || !ok {
		return false, err
	}
	lost := mu.Done() // this Mutex holds only this lock
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop, watching := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watching)
		select {
		case <-lost:
			if err := mu.Err(); errors.Is(err, sqllock.ErrLockLost) {
				cancel(err)
			}
		case <-stop:
		}
	}()
	release := func() error {
		close(stop)
		<-watching
		rctx, done := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer done()
		return unlock(rctx)
	}
	returned := false
	defer func() {
		if !returned { // fn panicked
			_ = release()
		}
	}()
	fnErr := fn(fctx)
	returned = true
	relErr := release()
	switch {
	case relErr == nil:
		return true, fnErr
	case fnErr == nil:
		return true, relErr
	}
	return true, fmt.Errorf("%w (and: %w)", relErr, fnErr)
}
