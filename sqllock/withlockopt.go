package sqllock

import (
	"errors"
	"fmt"
	"time"
)

// A WithLockOption changes one call of [Mutex.WithLock] or
// [Mutex.WithLockShared].
type WithLockOption func(*withLockConfig)

type withLockConfig struct {
	maxWait time.Duration // > 0: bound of the wait alone
	err     error
}

// MaxWait bounds the wait for the lock to d, and leaves fn to ctx: "wait at
// most 2s for the lock, then run a job that may take longer" is
//
//	err := mu.WithLock(ctx, job, sqllock.MaxWait(2*time.Second))
//
// If the lock is not granted within d, fn does not run, and WithLock
// returns an error wrapping [ErrNotAcquired] and
// [context.DeadlineExceeded]. d must be positive.
func MaxWait(d time.Duration) WithLockOption {
	return func(c *withLockConfig) {
		if d <= 0 {
			c.err = fmt.Errorf("sqllock: MaxWait(%v): the wait bound must be positive", d)
			return
		}
		c.maxWait = d
	}
}

// unwrapOwn returns the cause inside err if err is a *Error of this
// package (the same lock's, from the step that failed), so that WithLock's
// error names the lock once.
func unwrapOwn(err error) error {
	var e *Error
	if errors.As(err, &e) && e.Err != nil {
		return e.Err
	}
	return err
}

// joinRelease is the error of a run-with form whose fn returned fnErr and
// whose release returned relErr (see Mutex.WithLock and Semaphore.WithSlot).
func joinRelease(fnErr, relErr error) error {
	switch {
	case relErr == nil:
		return fnErr
	case fnErr == nil:
		return relErr
	case errors.Is(fnErr, ErrLockLost) && errors.Is(relErr, ErrLockLost):
		// fn returned its context's cause, the loss: saying it twice
		// adds nothing.
		return fnErr
	}
	return fmt.Errorf("%w (and fn returned: %w)", relErr, fnErr)
}
