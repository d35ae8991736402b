package sqllock

import (
	"sync"
	"time"
)

// A scheduler runs the timed work of a Locker's holds on one timer: each
// held lock's next keep-alive probe, and the bound of each release whose
// context never ends.
//
// One timer, not one per hold, because arming a timer is not free on a
// lock's hot path: when the goroutine's P has no earlier timer, the Go
// runtime wakes a thread to watch the new one, which costs a futex wake-up
// per Lock (measured: about 8% of the client's CPU per Lock+Unlock with
// pgx). The shared timer stays armed across locks, so a program that takes
// and releases locks in a loop re-arms it about once per keep-alive
// interval instead.
type scheduler struct {
	mu    sync.Mutex
	holds []*hold     // scheduled holds, each at holds[h.slot]
	timer *time.Timer // made on first use; runs fire
	at    time.Time   // when timer fires; zero when it is not armed
}

// What a scheduled hold is waiting for.
const (
	dueProbe   = iota + 1 // its next keep-alive probe
	dueRelease            // the end of its release's bound
)

// schedule sets h's single entry to run kind at due, replacing any entry
// it had. The caller must not hold s.mu.
func (s *scheduler) schedule(h *hold, due time.Time, kind int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h.due, h.dueKind = due, kind
	if h.slot < 0 {
		h.slot = len(s.holds)
		s.holds = append(s.holds, h)
	}
	if s.at.IsZero() || due.Before(s.at) {
		s.arm(due)
	}
}

// cancel removes h's entry, if it has one.
func (s *scheduler) cancel(h *hold) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.slot >= 0 {
		s.drop(h.slot)
	}
}

// drop removes the entry at slot i, moving the last entry into its place.
func (s *scheduler) drop(i int) {
	h := s.holds[i]
	last := len(s.holds) - 1
	s.holds[i] = s.holds[last]
	s.holds[i].slot = i
	s.holds[last] = nil
	s.holds = s.holds[:last]
	h.slot = -1
}

func (s *scheduler) arm(at time.Time) {
	s.at = at
	if s.timer == nil {
		s.timer = time.AfterFunc(time.Until(at), s.fire)
		return
	}
	s.timer.Reset(time.Until(at))
}

// fire starts every entry that is due, each in its own goroutine (a probe
// may wait for as long as the keep-alive timeout), and re-arms the timer
// for the earliest entry left. A fire with nothing due (the timer was
// re-armed meanwhile, or the holds it was armed for are gone) only
// re-arms.
func (s *scheduler) fire() {
	s.mu.Lock()
	now := time.Now()
	s.at = time.Time{}
	var next time.Time
	for i := 0; i < len(s.holds); {
		h := s.holds[i]
		if h.due.After(now) {
			if next.IsZero() || h.due.Before(next) {
				next = h.due
			}
			i++
			continue
		}
		s.drop(i)
		go h.run(h.dueKind)
	}
	if !next.IsZero() {
		s.arm(next)
	}
	s.mu.Unlock()
}
