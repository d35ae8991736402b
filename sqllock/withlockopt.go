package sqllock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/session"
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

// A runner is what WithLock and WithSlot share (see runHolding): a Mutex
// or a Semaphore.
type runner interface {
	fail(op string, err error) error
	// acquireRun acquires under ctx, telling onLost of a loss, and
	// registers the grant while fn runs, so that Done and Err describe it
	// inside fn: a grant and its observed attempt, or none (contended,
	// with try).
	acquireRun(ctx context.Context, shared, try bool, onLost func(error)) (*session.Grant, *attempt, error)
	// releaseRun unregisters g and releases it.
	releaseRun(ctx context.Context, g *session.Grant) error
}

// runHolding runs fn holding a grant of r, and releases it however fn
// ends (see Mutex.WithLock): the bool reports whether fn ran.
func runHolding(r runner, op string, shared, try bool, ctx context.Context, fn func(context.Context) error, opts []WithLockOption) (bool, error) {
	if fn == nil {
		return false, r.fail(op, ErrNilFunc)
	}
	if ctx == nil {
		return false, r.fail(op, ErrNilContext)
	}
	var cfg withLockConfig
	for _, opt := range opts {
		if opt == nil {
			return false, r.fail(op, errors.New("sqllock: nil WithLockOption"))
		}
		opt(&cfg)
	}
	if cfg.err != nil {
		return false, r.fail(op, cfg.err)
	}
	wctx := ctx
	if cfg.maxWait > 0 {
		var cancelWait context.CancelFunc
		wctx, cancelWait = context.WithTimeout(ctx, cfg.maxWait)
		defer cancelWait()
	}
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	g, a, err := r.acquireRun(wctx, shared, try, cancel)
	if err != nil {
		return false, r.fail(op, fmt.Errorf("%w: %w", ErrNotAcquired, unwrapOwn(err)))
	}
	if g == nil {
		return false, nil
	}
	if t := g.Token(); t != 0 {
		fctx = context.WithValue(fctx, tokenKey{}, t)
	}
	if a != nil && a.hold {
		fctx = a.holdContext(fctx)
	}
	// The release runs under ctx's values but not its cancellation: a
	// context that never ends gets the keep-alive timeout as its bound
	// (see session.Grant.Release). One that already never ends is used as it is.
	rctx := ctx
	if ctx.Done() != nil {
		rctx = context.WithoutCancel(ctx)
	}
	returned := false
	defer func() {
		if !returned { // fn panicked or called runtime.Goexit
			_ = r.releaseRun(rctx, g)
		}
	}()
	fnErr := fn(fctx)
	returned = true
	return true, joinRelease(fnErr, r.releaseRun(rctx, g))
}
