package chaos

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"time"
)

// Input is everything a run produced, for [Check].
type Input struct {
	Records        []Record // every worker's records
	History        []Access // chaos_access in seq order
	Counter        int64    // the counter's final value
	Faults         []Fault  // injected faults, in order
	Exits          []Exit   // worker processes that ended
	Leftover       int      // advisory locks in pg_locks once every worker had stopped
	Fenced         bool     // accesses were guarded by the tokens
	RequiredFaults []string // kinds that must have been injected
	Problems       []string // what the controller saw go wrong (unexpected exits, ...)
}

// A Section is one critical section: from the grant (as the worker saw it)
// to the end of its work, before the release.
type Section struct {
	Worker  string
	Holder  int
	Token   uint64
	Start   int64
	End     int64  // Unix nanoseconds; for a section without an end record, its holder's exit
	Granted int64  // the grant came after this: the end of the worker's previous section (math.MinInt64 for its first)
	Open    bool   // no end record (killed); End is the holder's exit, or math.MaxInt64
	Outcome string // "" when open
	Err     string
	Lost    string // the worker's loss report, if any
	Read    bool   // the database accepted an access of the resource with this token
}

// An Overlap is two critical sections that ran at the same time: the
// earlier started before the later, which started before the earlier
// ended.
type Overlap struct {
	Earlier, Later Section
	Faults         []Fault // faults that explain it
	LossReports    []string
	Explained      bool
}

// Continuity is the token order across one server restart or failover.
type Continuity struct {
	Fault      Fault
	MaxBefore  uint64 // the largest token of a section that started before the fault (and accessed the resource)
	MinAfter   uint64 // the smallest token of a section that started after it was over
	Before     int    // sections before and after
	After      int
	Increasing bool
	Unobserved bool // no section on one side
}

// Result is what [Check] found, and what the report shows.
type Result struct {
	Run RunInfo

	Grants   int            // critical sections begun (each under its own grant and token)
	Outcomes map[string]int // by outcome; "open" for sections without an end (killed)
	Losses   int            // loss reports
	Faults   map[string]int // by kind
	Sections []Section

	Overlaps    []Overlap
	Unexplained int
	ByLossOnly  int // overlaps explained by a loss report and no fault

	Reads, Writes  int   // accesses the database accepted
	StaleWrites    int   // accepted writes carrying a token older than one that accessed before
	StaleReads     int   // the same for reads
	Counter        int64 // the counter's final value
	LostIncrements int   // writes - counter, when positive
	Doubled        int   // counter - writes, when positive
	OutOfSequence  int   // writes whose value is not the previous write's plus one (the first: 1)

	TokenOrderBreaks int // sections whose token is not above every token of a section that ended before they began
	Continuity       []Continuity
	Leftover         int

	Violations []string
}

// Failed reports whether the run found a violation.
func (r *Result) Failed() bool { return len(r.Violations) > 0 }

// Check checks a run's output. It is a pure function of in.
func Check(in Input) *Result {
	r := &Result{Outcomes: map[string]int{}, Faults: map[string]int{}, Leftover: in.Leftover, Counter: in.Counter}
	r.Violations = append(r.Violations, in.Problems...)
	for _, f := range in.Faults {
		r.Faults[f.Kind]++
	}
	for _, k := range in.RequiredFaults {
		if r.Faults[k] == 0 {
			r.violate("no %s fault was injected", k)
		}
	}
	r.sections(in)
	r.history(in)
	r.overlaps(in.Faults)
	if in.Fenced {
		r.tokenOrder()
	}
	r.continuity(in.Faults, in.Fenced)
	if in.Leftover != 0 {
		r.violate("%d advisory locks left in pg_locks after every worker stopped", in.Leftover)
	}
	return r
}

func (r *Result) violate(format string, args ...any) {
	r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
}

// sections joins begin, end and loss records into sections.
func (r *Result) sections(in Input) {
	byToken := map[uint64]*Section{}
	var order []uint64
	for _, rec := range in.Records {
		if rec.Ev != EvBegin {
			continue
		}
		if s, dup := byToken[rec.Token]; dup {
			r.violate("token %d granted twice: to %s and %s", rec.Token, s.Worker, rec.Worker)
			continue
		}
		byToken[rec.Token] = &Section{Worker: rec.Worker, Holder: rec.Holder, Token: rec.Token, Start: rec.T, Open: true, End: math.MaxInt64}
		order = append(order, rec.Token)
	}
	for _, rec := range in.Records {
		switch rec.Ev {
		case EvEnd:
			s := byToken[rec.Token]
			if s == nil {
				r.violate("end of a section never begun: %s token %d", rec.Worker, rec.Token)
				continue
			}
			s.End, s.Open, s.Outcome, s.Err = rec.T, false, rec.Outcome, rec.Err
		case EvLoss:
			r.Losses++
			if rec.Err == "" {
				rec.Err = "loss reported"
			}
			// A library worker names the token; withlock's loss names the
			// withlock process, which ran one section.
			if s := byToken[rec.Token]; rec.Token != 0 && s != nil {
				s.Lost = rec.Err
				continue
			}
			for _, tok := range order {
				if s := byToken[tok]; s.Holder == rec.Holder && s.Worker == rec.Worker {
					s.Lost = rec.Err
				}
			}
		}
	}
	for _, tok := range order {
		s := byToken[tok]
		if s.Open {
			for _, e := range in.Exits {
				if e.PID == s.Holder && e.T >= s.Start && e.T < s.End {
					s.End = e.T
				}
			}
			r.Outcomes["open"]++
		} else {
			r.Outcomes[s.Outcome]++
		}
		r.Sections = append(r.Sections, *s)
	}
	r.Grants = len(r.Sections)
	// A section's grant came after the worker's previous section ended
	// (for withlock, in the withlock process, before the section began).
	idx := make([]int, len(r.Sections))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return r.Sections[idx[a]].Start < r.Sections[idx[b]].Start })
	prevEnd := map[string]int64{}
	for _, i := range idx {
		s := &r.Sections[i]
		s.Granted = math.MinInt64
		if e, ok := prevEnd[s.Worker]; ok {
			s.Granted = e
		}
		prevEnd[s.Worker] = s.End
	}
}

// history checks the database's record of accesses: stale accesses,
// increments, and that it agrees with the workers' records.
func (r *Result) history(in Input) {
	granted := map[uint64]int{} // token -> index in Sections
	for i, s := range r.Sections {
		granted[s.Token] = i
	}
	var fence uint64
	var lastWrite int64
	wrote := map[uint64]bool{}
	for _, a := range in.History {
		i, ok := granted[a.Token]
		switch {
		case !ok:
			r.violate("access %d (%s by %s) carries token %d, which no section began with", a.Seq, a.Kind, a.Worker, a.Token)
		case r.Sections[i].Worker != a.Worker:
			r.violate("access %d by %s carries %s's token %d", a.Seq, a.Worker, r.Sections[i].Worker, a.Token)
		default:
			r.Sections[i].Read = true
		}
		stale := a.Token < fence
		fence = max(fence, a.Token)
		switch a.Kind {
		case "read":
			r.Reads++
			if stale {
				r.StaleReads++
			}
		case "write":
			r.Writes++
			wrote[a.Token] = true
			if stale {
				r.StaleWrites++
			}
			if a.Value != lastWrite+1 {
				r.OutOfSequence++
			}
			lastWrite = a.Value
		}
	}
	for _, s := range r.Sections {
		if s.Outcome == OutWrote && !wrote[s.Token] {
			r.violate("%s's section with token %d says it wrote, but the database has no such write", s.Worker, s.Token)
		}
	}
	if d := int64(r.Writes) - in.Counter; d > 0 {
		r.LostIncrements = int(d)
	} else if d < 0 {
		r.Doubled = int(-d)
	}
	if in.Fenced {
		if r.StaleWrites > 0 {
			r.violate("%d stale writes accepted with fencing", r.StaleWrites)
		}
		if r.StaleReads > 0 {
			r.violate("%d stale reads accepted with fencing", r.StaleReads)
		}
		if r.LostIncrements > 0 || r.Doubled > 0 || r.OutOfSequence > 0 {
			r.violate("increments: %d writes, counter %d, %d lost, %d doubled, %d out of sequence",
				r.Writes, in.Counter, r.LostIncrements, r.Doubled, r.OutOfSequence)
		}
	}
}

// overlaps finds every pair of sections that ran at the same time and
// what explains it: a fault that hit the worker of either section (or the
// whole server) after that section's grant and before the later section
// began, or a loss report by either worker. A grant is not recorded (for
// withlock it happens in another process, before the section starts), so
// "after the grant" means after the end of the worker's previous section.
func (r *Result) overlaps(faults []Fault) {
	ss := slices.Clone(r.Sections)
	sort.SliceStable(ss, func(i, j int) bool { return ss[i].Start < ss[j].Start })
	for j, q := range ss {
		for _, p := range ss[:j] {
			if p.End <= q.Start {
				continue
			}
			o := Overlap{Earlier: p, Later: q}
			for _, f := range faults {
				if f.Start > q.Start {
					continue
				}
				for _, x := range []Section{p, q} {
					if (f.Worker == "" || f.Worker == x.Worker) && f.End >= x.Granted {
						o.Faults = append(o.Faults, f)
						break
					}
				}
			}
			for _, s := range []Section{p, q} {
				if s.Lost != "" {
					o.LossReports = append(o.LossReports, s.Worker+": "+s.Lost)
				} else if s.Outcome == OutLost {
					o.LossReports = append(o.LossReports, s.Worker+": "+s.Err)
				}
			}
			o.Explained = len(o.Faults) > 0 || len(o.LossReports) > 0
			switch {
			case !o.Explained:
				r.Unexplained++
				r.violate("unexplained overlap: %s token %d and %s token %d ran together for %v",
					p.Worker, p.Token, q.Worker, q.Token, overlapLen(p, q))
			case len(o.Faults) == 0:
				r.ByLossOnly++
			}
			r.Overlaps = append(r.Overlaps, o)
		}
	}
}

// overlapLen is how long two overlapping sections ran together.
func overlapLen(p, q Section) time.Duration {
	end := min(p.End, q.End)
	if end == math.MaxInt64 {
		return -1
	}
	return time.Duration(end - q.Start)
}

// tokenOrder checks that tokens grow in grant order: among sections whose
// token reached the resource, each one's token is above the token of every
// section that ended before it began. (A section whose grant was already
// stale when it began, refused at its first access, is not ordered: its
// grant came before the newer holder's, however late it woke.)
func (r *Result) tokenOrder() {
	var ss []Section
	for _, s := range r.Sections {
		if s.Read {
			ss = append(ss, s)
		}
	}
	byEnd := slices.Clone(ss)
	sort.Slice(ss, func(i, j int) bool { return ss[i].Start < ss[j].Start })
	sort.Slice(byEnd, func(i, j int) bool { return byEnd[i].End < byEnd[j].End })
	var maxEnded uint64
	k := 0
	for _, s := range ss {
		for k < len(byEnd) && byEnd[k].End < s.Start {
			maxEnded = max(maxEnded, byEnd[k].Token)
			k++
		}
		if s.Token <= maxEnded {
			r.TokenOrderBreaks++
		}
	}
	if r.TokenOrderBreaks > 0 {
		r.violate("%d sections began with a token not above one of a section that had already ended", r.TokenOrderBreaks)
	}
}

// continuity reports the tokens on each side of every restart and
// failover; with fencing, tokens must grow across each.
func (r *Result) continuity(faults []Fault, fenced bool) {
	for _, f := range faults {
		if f.Kind != FaultRestart && f.Kind != FaultFailover {
			continue
		}
		c := Continuity{Fault: f, MinAfter: math.MaxUint64}
		for _, s := range r.Sections {
			switch {
			case !s.Read:
			case s.Start < f.Start:
				c.MaxBefore = max(c.MaxBefore, s.Token)
				c.Before++
			case s.Start > f.End:
				c.MinAfter = min(c.MinAfter, s.Token)
				c.After++
			}
		}
		c.Unobserved = c.Before == 0 || c.After == 0
		c.Increasing = c.Unobserved || c.MaxBefore < c.MinAfter
		if !c.Increasing && fenced {
			r.violate("tokens went back across %s at %s: %d before, %d after",
				f.Detail, time.Unix(0, f.Start).Format(time.TimeOnly), c.MaxBefore, c.MinAfter)
		}
		r.Continuity = append(r.Continuity, c)
	}
}
