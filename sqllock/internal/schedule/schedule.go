// Package schedule runs timed work on one timer: a Scheduler holds at most
// one entry per task, and runs each entry that falls due in a goroutine of
// its own. sqllock schedules each session's next keep-alive probe, and the
// bound of each release whose context never ends, on its Locker's
// Scheduler.
//
// One timer, not one per task, because arming a timer is not free on a
// lock's hot path: when the goroutine's P has no earlier timer, the Go
// runtime wakes a thread to watch the new one (docs/design.md has the
// measurement). The shared timer stays armed across locks, so a program
// that takes and releases locks in a loop re-arms it about once per
// keep-alive interval instead.
//
// Times are offsets from the Scheduler's base, read from the monotonic
// clock only (time.Since), which costs one clock read where time.Now
// costs two.
package schedule

import (
	"sync"
	"time"
)

// An Entry is a task's place in a Scheduler. Embed it in the task; the
// zero Entry is unscheduled. The Scheduler guards it.
type Entry struct {
	slot int // index in the Scheduler's list, plus one; 0 when unscheduled
	due  time.Duration
	kind int
}

// A Task is what a Scheduler runs: Run(kind) with the kind it was
// scheduled with.
type Task interface {
	Entry() *Entry
	Run(kind int)
}

// A Scheduler runs the entries of tasks of type T on one timer. Its zero
// value is not ready: set its base with Start.
type Scheduler[T Task] struct {
	base time.Time // due times are offsets from it

	mu    sync.Mutex
	tasks []T           // scheduled tasks, each at tasks[Entry().slot-1]
	timer *time.Timer   // made on first use; runs fire
	at    time.Duration // when timer fires, if armed
	armed bool
}

// Start sets the Scheduler's base, before first use.
func (s *Scheduler[T]) Start(base time.Time) { s.base = base }

// Now returns the Scheduler's time: the time elapsed since its base.
func (s *Scheduler[T]) Now() time.Duration { return time.Since(s.base) }

// After sets t's single entry to run kind after delay d, replacing any
// entry it had.
func (s *Scheduler[T]) After(t T, d time.Duration, kind int) {
	s.Schedule(t, s.Now()+d, kind)
}

// Schedule sets t's single entry to run kind at due (see Now), replacing
// any entry it had.
func (s *Scheduler[T]) Schedule(t T, due time.Duration, kind int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.set(t, due, kind)
}

func (s *Scheduler[T]) set(t T, due time.Duration, kind int) {
	e := t.Entry()
	e.due, e.kind = due, kind
	if e.slot == 0 {
		s.tasks = append(s.tasks, t)
		e.slot = len(s.tasks)
	}
	if !s.armed || due < s.at {
		s.arm(due)
	}
}

// AtLatest makes t's entry run by due at the latest: it sets one to run
// kind then, unless t has an entry due no later.
func (s *Scheduler[T]) AtLatest(t T, due time.Duration, kind int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := t.Entry(); e.slot == 0 || e.due > due {
		s.set(t, due, kind)
	}
}

// Cancel removes t's entry, if it has one.
func (s *Scheduler[T]) Cancel(t T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := t.Entry(); e.slot != 0 {
		s.drop(e.slot - 1)
	}
}

// Len returns the number of entries scheduled.
func (s *Scheduler[T]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tasks)
}

// drop removes the entry at index i, moving the last entry into its place.
func (s *Scheduler[T]) drop(i int) {
	t := s.tasks[i]
	last := len(s.tasks) - 1
	s.tasks[i] = s.tasks[last]
	s.tasks[i].Entry().slot = i + 1
	var zero T
	s.tasks[last] = zero
	s.tasks = s.tasks[:last]
	t.Entry().slot = 0
}

func (s *Scheduler[T]) arm(at time.Duration) {
	s.at, s.armed = at, true
	if s.timer == nil {
		s.timer = time.AfterFunc(at-s.Now(), s.fire)
		return
	}
	s.timer.Reset(at - s.Now())
}

// fire starts every entry that is due, each in its own goroutine (a
// keep-alive probe may wait as long as its timeout), and re-arms the timer
// for the earliest entry left. A fire with nothing due (the timer was
// re-armed meanwhile, or the entries it was armed for are gone) only
// re-arms.
func (s *Scheduler[T]) fire() {
	s.mu.Lock()
	now := s.Now()
	s.armed = false
	var next time.Duration
	found := false
	for i := 0; i < len(s.tasks); {
		t := s.tasks[i]
		e := t.Entry()
		if e.due > now {
			if !found || e.due < next {
				next, found = e.due, true
			}
			i++
			continue
		}
		s.drop(i)
		go t.Run(e.kind)
	}
	if found {
		s.arm(next)
	}
	s.mu.Unlock()
}
