package chaos

import (
	"bytes"
	"strings"
	"testing"
)

// A tiny language for synthetic runs: times are plain numbers.

func sec(worker string, holder int, token uint64, start, end int64, outcome string) []Record {
	return []Record{
		{Ev: EvBegin, Worker: worker, Holder: holder, Token: token, T: start},
		{Ev: EvEnd, Worker: worker, Holder: holder, Token: token, T: end, Outcome: outcome},
	}
}

func recs(parts ...[]Record) []Record {
	var all []Record
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

// rw is a fenced read then write by a section: value read v, written v+1.
func rw(seq *int64, worker string, token uint64, v int64) []Access {
	*seq += 2
	return []Access{
		{Seq: *seq - 1, Worker: worker, Token: token, Kind: "read", Value: v},
		{Seq: *seq, Worker: worker, Token: token, Kind: "write", Value: v + 1},
	}
}

func hist(parts ...[]Access) []Access {
	var all []Access
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

// clean is three workers taking turns without a fault.
func clean() Input {
	var seq int64
	return Input{
		Records: recs(sec("w1", 1, 10, 0, 10, OutWrote), sec("w2", 2, 11, 20, 30, OutWrote), sec("w3", 3, 12, 40, 50, OutWrote)),
		History: hist(rw(&seq, "w1", 10, 0), rw(&seq, "w2", 11, 1), rw(&seq, "w3", 12, 2)),
		Counter: 3,
		Fenced:  true,
	}
}

func wantViolation(t *testing.T, r *Result, substr string) {
	t.Helper()
	for _, v := range r.Violations {
		if strings.Contains(v, substr) {
			return
		}
	}
	t.Errorf("violations %q: want one containing %q", r.Violations, substr)
}

func wantPass(t *testing.T, r *Result) {
	t.Helper()
	if r.Failed() {
		t.Errorf("violations %q, want none", r.Violations)
	}
}

func TestCheckClean(t *testing.T) {
	r := Check(clean())
	wantPass(t, r)
	if r.Grants != 3 || r.Writes != 3 || r.Reads != 3 || len(r.Overlaps) != 0 || r.Outcomes[OutWrote] != 3 {
		t.Errorf("got grants %d, writes %d, reads %d, overlaps %d, outcomes %v; want 3, 3, 3, 0, wrote 3",
			r.Grants, r.Writes, r.Reads, len(r.Overlaps), r.Outcomes)
	}
	var b bytes.Buffer
	if err := r.WriteReport(&b); err != nil || !strings.Contains(b.String(), "**pass**") {
		t.Errorf("report: %v\n%s", err, b.String())
	}
}

func TestCheckOverlap(t *testing.T) {
	// w1 (token 10) is paused in its section; the server frees its lock and
	// w2 (token 11) runs while w1 is still in its section; w1's write is
	// refused.
	var seq int64
	in := Input{
		Records: recs(sec("w1", 1, 8, -100, -60, OutRefusedRead), sec("w2", 2, 9, -58, -20, OutRefusedRead),
			sec("w1", 1, 10, 0, 100, OutRefusedWrite), sec("w2", 2, 11, 50, 70, OutWrote)),
		History: hist([]Access{{Seq: 1, Worker: "w1", Token: 10, Kind: "read", Value: 0}}, func() []Access { seq = 1; return rw(&seq, "w2", 11, 0) }()),
		Counter: 1,
		Fenced:  true,
	}
	t.Run("Unexplained", func(t *testing.T) {
		r := Check(in)
		if len(r.Overlaps) != 1 || r.Unexplained != 1 {
			t.Fatalf("got %d overlaps, %d unexplained; want 1, 1", len(r.Overlaps), r.Unexplained)
		}
		wantViolation(t, r, "unexplained overlap")
	})
	t.Run("ByFault", func(t *testing.T) {
		in := in
		in.Faults = []Fault{
			{Kind: FaultKill, Worker: "w3", Start: 10, End: 10},      // another worker: no
			{Kind: FaultPause, Worker: "w1", Start: 200, End: 300},   // too late: no
			{Kind: FaultPause, Worker: "w1", Start: 20, End: 45},     // yes
			{Kind: FaultRestart, Worker: "", Start: -70, End: -65},   // over before either section's grant: no
			{Kind: FaultKill, Worker: "w1", Start: -5, End: -5},      // w1 after its grant, before its section began: yes
			{Kind: FaultSilence, Worker: "w2", Start: 40, End: 45},   // the later one's network: yes
			{Kind: FaultTerminate, Worker: "w1", Start: 60, End: 60}, // after w2 began: no
		}
		r := Check(in)
		wantPass(t, r)
		if len(r.Overlaps) != 1 || len(r.Overlaps[0].Faults) != 3 || r.Overlaps[0].Faults[0].Kind != FaultPause ||
			r.Overlaps[0].Faults[1].Kind != FaultKill || r.Overlaps[0].Faults[2].Kind != FaultSilence {
			t.Errorf("got overlaps %+v, want one explained by the pause, the kill and the silence", r.Overlaps)
		}
	})
	t.Run("ByLossReport", func(t *testing.T) {
		in := in
		in.Records = append(in.Records, Record{Ev: EvLoss, Worker: "w1", Holder: 1, Token: 10, T: 101, Err: "lock lost"})
		r := Check(in)
		wantPass(t, r)
		if r.ByLossOnly != 1 || r.Losses != 1 {
			t.Errorf("got %d explained by a loss alone, %d losses; want 1, 1", r.ByLossOnly, r.Losses)
		}
	})
}

func TestCheckWithlockLoss(t *testing.T) {
	// withlock (pid 7) reports the loss by its exit status: the section it
	// ran (holder 7) is the lost one.
	in := clean()
	in.Records = append(in.Records, Record{Ev: EvLoss, Worker: "w2", PID: 7, Holder: 7, T: 31})
	in.Records[2].Holder, in.Records[3].Holder = 7, 7
	r := Check(in)
	wantPass(t, r)
	for _, s := range r.Sections {
		if (s.Lost != "") != (s.Token == 11) {
			t.Errorf("section %d: lost %q", s.Token, s.Lost)
		}
	}
}

func TestCheckKilledSectionEndsAtExit(t *testing.T) {
	// w1 is killed in its section (no end record) at 15; w2 begins at 20.
	in := clean()
	in.Records = in.Records[1:] // drop w1's end... and keep its begin:
	in.Records = append([]Record{{Ev: EvBegin, Worker: "w1", Holder: 1, Token: 10, T: 0}}, in.Records[1:]...)
	in.Exits = []Exit{{Worker: "w1", PID: 1, T: 15}}
	in.History = in.History[2:]
	in.History = append([]Access{{Seq: 0, Worker: "w1", Token: 10, Kind: "read", Value: 0}}, in.History...)
	in.History[1].Value, in.History[2].Value = 0, 1 // w2 reads 0, writes 1
	in.History[3].Value, in.History[4].Value = 1, 2
	in.Counter = 2
	r := Check(in)
	wantPass(t, r)
	if len(r.Overlaps) != 0 || r.Outcomes["open"] != 1 || r.Sections[0].End != 15 {
		t.Errorf("got %d overlaps, outcomes %v, end %d; want 0, open 1, 15", len(r.Overlaps), r.Outcomes, r.Sections[0].End)
	}

	in.Exits = nil // never exited: it overlaps everything after it
	r = Check(in)
	if len(r.Overlaps) != 2 || r.Unexplained != 2 {
		t.Errorf("without an exit: got %d overlaps, %d unexplained; want 2, 2", len(r.Overlaps), r.Unexplained)
	}
}

func TestCheckStaleWrite(t *testing.T) {
	// w1 (token 10) writes after w2 (token 11) read: a stale write, and a
	// lost increment (both wrote 1).
	in := Input{
		Records: recs(sec("w1", 1, 10, 0, 100, OutWrote), sec("w2", 2, 11, 50, 70, OutWrote)),
		History: []Access{
			{Seq: 1, Worker: "w1", Token: 10, Kind: "read", Value: 0},
			{Seq: 2, Worker: "w2", Token: 11, Kind: "read", Value: 0},
			{Seq: 3, Worker: "w2", Token: 11, Kind: "write", Value: 1},
			{Seq: 4, Worker: "w1", Token: 10, Kind: "write", Value: 1},
		},
		Counter: 1,
		Faults:  []Fault{{Kind: FaultPause, Worker: "w1", Start: 10, End: 90}},
	}
	r := Check(in)
	if r.StaleWrites != 1 || r.LostIncrements != 1 || r.OutOfSequence != 1 {
		t.Errorf("got stale %d, lost %d, out of sequence %d; want 1, 1, 1", r.StaleWrites, r.LostIncrements, r.OutOfSequence)
	}
	wantPass(t, r) // unfenced: the damage is reported, not a failure

	in.Fenced = true
	r = Check(in)
	wantViolation(t, r, "stale writes accepted")
	wantViolation(t, r, "1 lost")
}

func TestCheckRecordsAgreeWithHistory(t *testing.T) {
	in := clean()
	in.History = in.History[:5] // w3's write is missing
	in.Counter = 2
	wantViolation(t, Check(in), "says it wrote")

	in = clean()
	in.History = append(in.History, Access{Seq: 7, Worker: "w9", Token: 99, Kind: "read"})
	wantViolation(t, Check(in), "which no section began with")
}

func TestCheckTokens(t *testing.T) {
	t.Run("Duplicate", func(t *testing.T) {
		in := clean()
		in.Records = append(in.Records, sec("w4", 4, 12, 60, 70, OutRefusedRead)...)
		wantViolation(t, Check(in), "granted twice")
	})
	t.Run("OrderBreak", func(t *testing.T) {
		// Token 9 begins after token 10 ended, and reaches the resource:
		// possible only if tokens went back.
		var seq int64
		in := Input{
			Records: recs(sec("w1", 1, 10, 0, 10, OutWrote), sec("w2", 2, 9, 20, 30, OutWrote)),
			History: hist(rw(&seq, "w1", 10, 0), rw(&seq, "w2", 9, 1)),
			Counter: 2, Fenced: true,
			Faults: []Fault{{Kind: FaultRestart, Start: 12, End: 18, Detail: "restart"}},
		}
		r := Check(in)
		if r.TokenOrderBreaks != 1 {
			t.Errorf("got %d breaks, want 1", r.TokenOrderBreaks)
		}
		wantViolation(t, r, "tokens went back across restart")
		wantViolation(t, r, "stale writes")
	})
	t.Run("StaleGrantNotOrdered", func(t *testing.T) {
		// A grant delivered late (token 9, after 10 ended) that the fence
		// refused at its first access is no break.
		in := clean()
		in.Records = append(in.Records, sec("w4", 4, 9, 60, 70, OutRefusedRead)...)
		in.Faults = []Fault{{Kind: FaultRestart, Start: 15, End: 18, Detail: "restart"}}
		r := Check(in)
		wantPass(t, r)
		if len(r.Continuity) != 1 || !r.Continuity[0].Increasing || r.Continuity[0].MaxBefore != 10 || r.Continuity[0].MinAfter != 11 {
			t.Errorf("got continuity %+v, want 10 then 11", r.Continuity)
		}
	})
}

func TestCheckRunLevel(t *testing.T) {
	in := clean()
	in.RequiredFaults = []string{FaultPause}
	in.Leftover = 2
	in.Problems = []string{"worker w1 exited unexpectedly"}
	r := Check(in)
	wantViolation(t, r, "no pause fault")
	wantViolation(t, r, "2 advisory locks left")
	wantViolation(t, r, "exited unexpectedly")
	var b bytes.Buffer
	if err := r.WriteReport(&b); err != nil || !strings.Contains(b.String(), "**FAIL**") {
		t.Errorf("report: %v\n%s", err, b.String())
	}
}

func TestReadRecordsCutShort(t *testing.T) {
	recs, err := readRecords(strings.NewReader(`{"ev":"begin","worker":"w1","token":5,"t":1}` + "\n" + `{"ev":"end","wor`))
	if err != nil || len(recs) != 1 || recs[0].Token != 5 {
		t.Errorf("got %+v, %v; want the one whole record", recs, err)
	}
	if _, err := readRecords(strings.NewReader("{bad}\n")); err == nil {
		t.Error("a malformed whole line: got nil error")
	}
}
