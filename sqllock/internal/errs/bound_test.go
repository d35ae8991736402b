package errs

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A statement that sqllock's own bound ended (pgx returns its context's
// error) reports ErrNoAnswer, not the context error: the caller ended no
// context. Before the bound passes, errors go through as they are.
func TestOwnBound(t *testing.T) {
	ended, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ended.Done()
	err := OwnBound(ended, time.Second, context.DeadlineExceeded)
	if !errors.Is(err, ErrNoAnswer) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("OwnBound after the bound: %v; want ErrNoAnswer and no context error", err)
	}
	other := errors.New("server said no")
	if err := OwnBound(context.Background(), time.Second, other); err != other {
		t.Fatalf("OwnBound before the bound: %v; want the error as it is", err)
	}
	if err := OwnBound(ended, time.Second, nil); err != nil {
		t.Fatalf("OwnBound of nil: %v", err)
	}
}
