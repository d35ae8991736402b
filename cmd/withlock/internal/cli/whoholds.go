package cli

import (
	"context"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// holdersTimeout bounds the -v lookup of who holds a lock that was not
// acquired, so that a slow server never holds up withlock's exit for long
// (the driver may take up to a second more to abandon the query).
const holdersTimeout = 2 * time.Second

// reportHolders says, with -v, who holds the lock and who waits for it,
// as withlock status does, after --try found it taken or --timeout expired.
// The lookup runs under ctx's values but not its cancellation, bounded by
// holdersTimeout; if it fails, withlock says so and goes on.
func reportHolders(ctx context.Context, mu *sqllock.Mutex, o *runOptions, log *logger) {
	if !log.verbose {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), holdersTimeout)
	defer cancel()
	hs, err := mu.Holders(ctx)
	if err != nil {
		log.printf("cannot tell who holds lock %q: %v", o.lockName, err)
		return
	}
	st := newLockStatus(o.lockName, o.scheme.name, mu.Key(), hs)
	if !st.Held {
		log.printf("lock %q has no holder now: it was released since", o.lockName)
	}
	for _, line := range st.sessionLines(time.Now()) {
		log.printf("%s", line)
	}
}
