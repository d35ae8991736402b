package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/jackc/pgx/v5"
)

// semaphoreStatus carries out withlock status --slots and returns the exit
// status: 1 when any slot is held, 0 when every slot is free.
func semaphoreStatus(ctx context.Context, o *statusOptions, cfg *pgx.ConnConfig, stdout io.Writer, log *logger) int {
	hs, err := o.locker.Semaphore(o.lockName, o.slots).Holders(ctx)
	if err != nil {
		log.printf("cannot read the semaphore's holders from %s: %v", describeDB(cfg), err)
		return ExitUnavailable
	}
	st := newSemStatus(o.lockName, o.scheme.name, o.semKeys, hs)
	return printStatus(st, st.Held, o.json, stdout, log)
}

// semStatus is what withlock status --slots reports, and its --json form.
type semStatus struct {
	Semaphore string         `json:"semaphore"`         // the semaphore's name
	Keyspace  string         `json:"keyspace"`          // the --keyspace scheme
	Slots     []slotStatus   `json:"slots"`             // every slot, from 0
	Held      bool           `json:"held"`              // whether any slot is held
	HeldSlots int            `json:"held_slots"`        // how many slots are held
	Waiting   int            `json:"waiting"`           // sessions waiting in the server for a slot
	WatchLock string         `json:"watch_lock"`        // "<name>#watch"
	WatchKey  string         `json:"watch_key"`         // its key
	Watcher   *sessionStatus `json:"watcher,omitempty"` // the session holding it: a waiter that tries the slots
}

// slotStatus is one slot of a semaphore: the lock "<name>#<slot>".
type slotStatus struct {
	Slot    int             `json:"slot"`
	Lock    string          `json:"lock"`
	Key     string          `json:"key"`
	Held    bool            `json:"held"`
	Holders []sessionStatus `json:"holders"`
	Waiters []sessionStatus `json:"waiters"`
}

// newSemStatus builds the status of the semaphore called name, in keyspace
// scheme, with the slots and keys ks, from its holders and waiters.
func newSemStatus(name, scheme string, ks semKeys, hs []sqllock.SlotHolder) *semStatus {
	st := &semStatus{
		Semaphore: name, Keyspace: scheme, Slots: make([]slotStatus, len(ks.slots)),
		WatchLock: name + "#watch", WatchKey: ks.watch.String(),
	}
	for i, k := range ks.slots {
		st.Slots[i] = slotStatus{Slot: i, Lock: sqllock.SlotName(name, i), Key: k.String(), Holders: []sessionStatus{}, Waiters: []sessionStatus{}}
	}
	for _, h := range hs {
		s := newSessionStatus(h.Holder)
		switch {
		case h.Slot < 0 || h.Slot >= len(st.Slots):
			if h.Granted && st.Watcher == nil {
				st.Watcher = &s
			}
		case h.Granted:
			st.Slots[h.Slot].Holders = append(st.Slots[h.Slot].Holders, s)
		default:
			st.Slots[h.Slot].Waiters = append(st.Slots[h.Slot].Waiters, s)
			st.Waiting++
		}
	}
	for i := range st.Slots {
		if st.Slots[i].Held = len(st.Slots[i].Holders) > 0; st.Slots[i].Held {
			st.HeldSlots++
		}
	}
	st.Held = st.HeldSlots > 0
	return st
}

// text renders the status for people.
func (st *semStatus) text(now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "semaphore %q (keyspace %s): %d of %s held\n", st.Semaphore, st.Keyspace, st.HeldSlots, plural(len(st.Slots), "slot"))
	for _, line := range st.sessionLines(now) {
		b.WriteString(line + "\n")
	}
	if st.Waiting == 0 {
		b.WriteString("no session waiting\n")
	}
	return b.String()
}

// sessionLines describes each slot, with its holders, then the number of
// sessions waiting for a slot and each of them, then the watcher.
func (st *semStatus) sessionLines(now time.Time) []string {
	var lines []string
	for _, sl := range st.Slots {
		what := fmt.Sprintf("slot %d (key %s):", sl.Slot, sl.Key)
		if !sl.Held {
			lines = append(lines, "  "+what+" free")
		}
		for _, s := range sl.Holders {
			lines = append(lines, s.text(what+" held by", now))
		}
	}
	if st.Waiting > 0 {
		lines = append(lines, plural(st.Waiting, "session")+" waiting for a slot")
		for _, sl := range st.Slots {
			for _, s := range sl.Waiters {
				lines = append(lines, s.text(fmt.Sprintf("slot %d: waiting", sl.Slot), now))
			}
		}
	}
	if st.Watcher != nil {
		lines = append(lines, st.Watcher.text(fmt.Sprintf("watch lock %q held by", st.WatchLock), now))
	}
	return lines
}
