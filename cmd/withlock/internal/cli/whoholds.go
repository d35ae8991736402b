package cli

import (
	"context"
	"time"
)

// holdersTimeout bounds the -v lookup of who holds a lock that was not
// acquired, so that a slow server never holds up withlock's exit for long
// (the driver may take up to a second more to abandon the query).
const holdersTimeout = 2 * time.Second

// reportHolders says, with -v, who holds the lock (each slot of the
// semaphore) and who waits for it, as withlock status does, after --try
// found it taken or --timeout expired. The lookup runs under ctx's values
// but not its cancellation, bounded by holdersTimeout; if it fails,
// withlock says so and goes on.
func (h *hold) reportHolders(ctx context.Context, log *logger) {
	if !log.verbose {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), holdersTimeout)
	defer cancel()
	o := h.o
	var lines []string
	if h.sem != nil {
		hs, err := h.sem.Holders(ctx)
		if err != nil {
			log.printf("cannot tell who holds the slots of semaphore %q: %v", o.lockName, err)
			return
		}
		st := newSemStatus(o.lockName, o.scheme.name, o.semKeys, hs)
		if st.HeldSlots < o.slots {
			log.printf("semaphore %q has %s now: released since", o.lockName, plural(o.slots-st.HeldSlots, "free slot"))
		}
		lines = st.sessionLines(time.Now())
	} else {
		hs, err := h.mu.Holders(ctx)
		if err != nil {
			log.printf("cannot tell who holds lock %q: %v", o.lockName, err)
			return
		}
		st := newLockStatus(o.lockName, o.scheme.name, h.mu.Key(), hs)
		if !st.Held {
			log.printf("lock %q has no holder now: it was released since", o.lockName)
		}
		lines = st.sessionLines(time.Now())
	}
	for _, line := range lines {
		log.printf("%s", line)
	}
}
