package chaos

import (
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// RunInfo describes a run, for the report.
type RunInfo struct {
	Config        Config
	Started       time.Time
	Elapsed       time.Duration
	ServerVersion string
	Failover      bool   // a standby was there to fail over to
	Counter       bool   // the counter had a server of its own (the failover was asynchronous)
	Command       string // how to reproduce the run
}

// maxOverlapRows bounds the overlap table of a report.
const maxOverlapRows = 40

// WriteReport writes r as a markdown section.
func (r *Result) WriteReport(w io.Writer) error {
	var b strings.Builder
	c := r.Run.Config
	mode := "fenced (every read and write carries the token)"
	if !c.Fenced {
		mode = "**unfenced** (tokens recorded, writes not guarded)"
	}
	fmt.Fprintf(&b, "Run of %s: %v, PostgreSQL %s, %s, seed %d.\n\n",
		r.Run.Started.UTC().Format("2006-01-02 15:04 MST"), r.Run.Elapsed.Round(time.Second), r.Run.ServerVersion, mode, c.Seed)
	if r.Run.Command != "" {
		fmt.Fprintf(&b, "Reproduce with `%s`.\n\n", r.Run.Command)
	}
	fmt.Fprintf(&b, "- Workers: %d library on lib/pq, %d library on pgx (`WithLock`, `sqllock.Token`; %s), %d `withlock --fencing` (sections alternately on lib/pq and pgx, reading `WITHLOCK_TOKEN`); each through loopback proxies of its own",
		c.PQ, c.PGX, sharingWorkers(c), c.Withlock)
	if r.Run.Failover {
		b.WriteString(", on a two-host connection string (primary, standby; `target_session_attrs=read-write`) that every client, lib/pq and pgx alike, follows to the promoted standby")
	}
	if c.pooled() > 0 {
		repointed := ""
		if r.Run.Failover {
			repointed = "; the run repoints it at the promoted standby"
		}
		fmt.Fprintf(&b, "; and %s behind a PgBouncer in transaction mode that the run starts (their proxies lead to it%s): %d library on lib/pq, each lock held in a transaction of its own, %d library on pgx sharing sessions (`WithSessions(%d)`, each session's locks in one transaction), %d `withlock --fencing`",
			pooledWorkers(c), repointed, c.PooledPQ, c.PooledPGX, sharedSessions, c.PooledWithlock)
	}
	if r.Run.Counter {
		b.WriteString(". The counter lives on a server of its own, which no fault touches; the failover is to an asynchronous standby cut off from the primary first, so the grants made meanwhile are lost with their commits and their transaction ids handed out again")
	}
	b.WriteString(".\n")
	fmt.Fprintf(&b, "- Keep-alive %v / %v (withlock: `--keepalive %v`, probe timeout 5s), leases %v (library, `WithLease`) and %v (withlock's default), no server setting, pauses and silences %v, work %v–%v per section, faults every %v–%v.\n\n",
		c.KeepAlive, c.KeepAliveTimeout, c.KeepAlive, c.Lease, max(c.KeepAlive, 5*time.Second)+5*time.Second, c.Pause, c.WorkMin, c.WorkMax, c.GapMin, c.GapMax)

	b.WriteString("| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| Grants (critical sections) | %d |\n", r.Grants)
	fmt.Fprintf(&b, "| Outcomes | %s |\n", r.outcomes())
	fmt.Fprintf(&b, "| Loss reports (WithLock's `ErrLockLost`, withlock's exit 74) | %d |\n", r.Losses)
	fmt.Fprintf(&b, "| Faults | %s |\n", r.faultCounts())
	fmt.Fprintf(&b, "| Overlapping critical sections | %d pairs, from %d sections that outlived their lock: %s |\n", len(r.Overlaps), len(r.overlapGroups()), r.overlapSummary())
	fmt.Fprintf(&b, "| Stale writes accepted | %d (stale reads: %d) |\n", r.StaleWrites, r.StaleReads)
	fmt.Fprintf(&b, "| Increments | %d writes, final counter %d: %d lost, %d doubled, %d out of sequence |\n",
		r.Writes, r.Counter, r.LostIncrements, r.Doubled, r.OutOfSequence)
	fmt.Fprintf(&b, "| Tokens in grant order | %s |\n", r.orderSummary())
	fmt.Fprintf(&b, "| Advisory locks left in `pg_locks` | %d |\n", r.Leftover)
	verdict := "**pass**"
	if !c.Fenced {
		verdict += " (unfenced: only an unexplained overlap or a run-level fault fails it; the damage above is what fencing prevents)"
	}
	if r.Failed() {
		verdict = fmt.Sprintf("**FAIL**: %d violations", len(r.Violations))
	}
	fmt.Fprintf(&b, "| Result | %s |\n\n", verdict)

	if len(r.Continuity) > 0 {
		b.WriteString("Tokens across each restart and failover (sections that reached the resource):\n\n")
		b.WriteString("| At | Fault | Largest token before | Smallest token after | |\n|---|---|---|---|---|\n")
		for _, k := range r.Continuity {
			after := "–"
			if k.MinAfter != math.MaxUint64 {
				after = fmt.Sprint(k.MinAfter)
			}
			mark := "increasing"
			switch {
			case k.Unobserved:
				mark = "no section on one side"
			case !k.Increasing:
				mark = "**went back**"
			}
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s |\n", r.at(k.Fault.Start), k.Fault.Detail, k.MaxBefore, after, mark)
		}
		b.WriteString("\n")
	}

	if groups := r.overlapGroups(); len(groups) > 0 {
		b.WriteString("Each critical section that ran on after its lock was lost (the one with the older token in each overlapping pair), what it overlapped, and the loss that explains it:\n\n")
		b.WriteString("| Section that outlived its lock | Newer holders it overlapped | Together for | Explained by |\n|---|---|---|---|\n")
		for i, g := range groups {
			if i == maxOverlapRows {
				fmt.Fprintf(&b, "| … and %d more | | | |\n", len(groups)-maxOverlapRows)
				break
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.sectionCell(g.stale), g.others, g.span, g.explanation)
		}
		b.WriteString("\n")
	}

	if len(r.Violations) > 0 {
		b.WriteString("Violations:\n\n")
		for _, v := range r.Violations {
			fmt.Fprintf(&b, "- %s\n", v)
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Result) outcomes() string {
	var parts []string
	for _, k := range []string{OutWrote, OutRefusedRead, OutRefusedWrite, OutLost, OutError, "open"} {
		if n := r.Outcomes[k]; n > 0 {
			name := k
			if k == "open" {
				name = "no end (killed)"
			}
			parts = append(parts, fmt.Sprintf("%s %d", name, n))
		}
	}
	return strings.Join(parts, ", ")
}

func (r *Result) faultCounts() string {
	var parts []string
	total := 0
	for _, k := range FaultKinds {
		parts = append(parts, fmt.Sprintf("%s %d", k, r.Faults[k]))
		total += r.Faults[k]
	}
	return fmt.Sprintf("%d: %s", total, strings.Join(parts, ", "))
}

func (r *Result) overlapSummary() string {
	if len(r.Overlaps) == 0 {
		return "none"
	}
	if r.Unexplained > 0 {
		return fmt.Sprintf("**%d unexplained**", r.Unexplained)
	}
	s := "all explained by a fault"
	if r.ByLossOnly > 0 {
		s = fmt.Sprintf("all explained: %d by a fault, %d by a loss report alone", len(r.Overlaps)-r.ByLossOnly, r.ByLossOnly)
	}
	return s
}

func (r *Result) orderSummary() string {
	if !r.Run.Config.Fenced {
		return "not checked (unfenced run)"
	}
	if r.TokenOrderBreaks == 0 {
		return "strictly increasing (no section began with a token at or below one of a section already ended)"
	}
	return fmt.Sprintf("**%d breaks**", r.TokenOrderBreaks)
}

// at formats a time as seconds into the run.
func (r *Result) at(t int64) string {
	if r.Run.Started.IsZero() {
		return time.Unix(0, t).UTC().Format("15:04:05.000")
	}
	return fmt.Sprintf("%.1fs", time.Duration(t-r.Run.Started.UnixNano()).Seconds())
}

func (r *Result) sectionCell(s Section) string {
	return fmt.Sprintf("%s token %d at %s, %s", s.Worker, s.Token, r.at(s.Start), outcomeOf(s))
}

// An overlapGroup is every overlap of one stale section: the section with
// the older token of each pair.
type overlapGroup struct {
	stale       Section
	others      string // the sections it overlapped
	span        string // from the first newer holder's start to the last shared moment
	explanation string
}

// overlapGroups groups the overlaps by their stale section, in order of
// its start.
func (r *Result) overlapGroups() []overlapGroup {
	type acc struct {
		stale    Section
		others   []string
		from, to int64 // the span the stale section shared with newer holders
		expl     []string
	}
	var order []uint64
	byToken := map[uint64]*acc{}
	for _, o := range r.Overlaps {
		stale, other := o.Earlier, o.Later
		if other.Token < stale.Token {
			stale, other = other, stale
		}
		a := byToken[stale.Token]
		if a == nil {
			a = &acc{stale: stale, from: math.MaxInt64, to: math.MinInt64}
			byToken[stale.Token] = a
			order = append(order, stale.Token)
		}
		a.others = append(a.others, fmt.Sprintf("%s %d (%s)", other.Worker, other.Token, outcomeOf(other)))
		a.from = min(a.from, max(stale.Start, other.Start))
		a.to = max(a.to, min(stale.End, other.End))
		if e := explanation(o); !slices.Contains(a.expl, e) {
			a.expl = append(a.expl, e)
		}
	}
	sort.Slice(order, func(i, j int) bool { return byToken[order[i]].stale.Start < byToken[order[j]].stale.Start })
	var gs []overlapGroup
	for _, tok := range order {
		a := byToken[tok]
		others := strings.Join(a.others, ", ")
		if len(a.others) > 3 {
			others = fmt.Sprintf("%d sections: %s … %s", len(a.others), strings.Join(a.others[:2], ", "), a.others[len(a.others)-1])
		}
		span := "until the end"
		if a.to != math.MaxInt64 {
			span = time.Duration(a.to - a.from).Round(time.Millisecond).String()
		}
		gs = append(gs, overlapGroup{stale: a.stale, others: others, span: span, explanation: strings.Join(a.expl, " / ")})
	}
	return gs
}

func outcomeOf(s Section) string {
	if s.Open {
		return "killed"
	}
	return s.Outcome
}

func explanation(o Overlap) string {
	var parts []string
	for _, f := range o.Faults {
		who := f.Worker
		if who == "" {
			who = "server"
		}
		parts = append(parts, fmt.Sprintf("%s of %s", f.Kind, who))
	}
	if len(o.LossReports) > 0 {
		parts = append(parts, "loss reported")
	}
	if len(parts) == 0 {
		return "**nothing**"
	}
	return strings.Join(parts, "; ")
}

// sharingWorkers names the library workers of c that share sessions, as
// controller.workers numbers them.
// pooledWorkers names the workers behind the pooler.
func pooledWorkers(c Config) string {
	var names []string
	for i, sl := range c.slots() {
		if sl.pooled {
			names = append(names, "w"+strconv.Itoa(i+1))
		}
	}
	return strings.Join(names, ", ")
}

func sharingWorkers(c Config) string {
	var names []string
	for i := range c.PQSessions {
		names = append(names, "w"+strconv.Itoa(i+1))
	}
	for i := range c.PGXSessions {
		names = append(names, "w"+strconv.Itoa(c.PQ+i+1))
	}
	if len(names) == 0 {
		return "each lock on a connection of its own"
	}
	return fmt.Sprintf("%s share sessions, `WithSessions(%d)`; the others take a connection per lock", strings.Join(names, " and "), sharedSessions)
}
