package errs

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// passedDeadline is a context whose deadline has passed but whose timer
// has not fired yet: Err and Cause are still nil.
type passedDeadline struct{ context.Context }

func (passedDeadline) Deadline() (time.Time, bool) { return time.Now().Add(-time.Millisecond), true }

// An error made from a context whose deadline passed a moment ago wraps
// context.DeadlineExceeded and reads cleanly, though the context's cause
// is still nil.
func TestWithCtxErrPassedDeadline(t *testing.T) {
	ctx := passedDeadline{context.Background()}
	err := WithCtxErr(ctx, context.Cause(ctx))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	if msg := err.Error(); strings.Contains(msg, "%!") {
		t.Fatalf("malformed message: %s", msg)
	}
}
