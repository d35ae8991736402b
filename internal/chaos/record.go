package chaos

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Kinds of [Record].
const (
	EvBegin = "begin" // a critical section started: the lock was granted with Token
	EvEnd   = "end"   // a critical section ended, with Outcome
	EvLoss  = "loss"  // the worker was told that its lock was lost
)

// Outcomes of a critical section, in an [EvEnd] record.
const (
	OutWrote        = "wrote"            // the counter was written
	OutRefusedRead  = "refused-at-read"  // a newer token had claimed the resource before the read
	OutRefusedWrite = "refused-at-write" // a newer token had claimed the resource before the write
	OutLost         = "lost"             // the section stopped because its lock was reported lost
	OutError        = "error"            // a query failed (server gone, network cut, ...)
)

// A Record is one line of a worker's records file: JSON, one per line,
// written and flushed as it happens, so that a killed worker loses at most
// the end of the section it was in.
type Record struct {
	Ev      string `json:"ev"`
	Worker  string `json:"worker"`
	PID     int    `json:"pid"`    // process that wrote the record
	Holder  int    `json:"holder"` // process holding the lock: the worker, or the withlock running the section
	Token   uint64 `json:"token,omitempty"`
	T       int64  `json:"t"` // wall clock, Unix nanoseconds
	Outcome string `json:"outcome,omitempty"`
	Err     string `json:"err,omitempty"`
}

// A Recorder appends records to a worker's records file. Several processes
// may append to the same file: each record is one write(2) on a file opened
// with O_APPEND.
type Recorder struct {
	f *os.File
}

// OpenRecorder opens (creating it if needed) the records file at path.
func OpenRecorder(path string) (*Recorder, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("chaos: opening records: %w", err)
	}
	return &Recorder{f: f}, nil
}

// Write appends r as one line. The line reaches the kernel before Write
// returns, so it survives the process being killed.
func (w *Recorder) Write(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := w.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("chaos: writing record: %w", err)
	}
	return nil
}

// Close closes the file.
func (w *Recorder) Close() error { return w.f.Close() }

// ReadRecords reads every records file (*.jsonl) in dir, in name order. A
// last line cut short (a worker killed mid-write) is ignored; any other
// malformed line is an error.
func ReadRecords(dir string) ([]Record, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var all []Record
	for _, name := range names {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		recs, err := readRecords(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("chaos: %s: %w", name, err)
		}
		all = append(all, recs...)
	}
	return all, nil
}

func readRecords(r io.Reader) ([]Record, error) {
	var recs []Record
	br := bufio.NewReader(r)
	for n := 1; ; n++ {
		line, err := br.ReadString('\n')
		if errors.Is(err, io.EOF) {
			return recs, nil // a line without its newline was cut short
		}
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		var rec Record
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		recs = append(recs, rec)
	}
}

// countBegins counts the begin records in dir's records files, cheaply: the
// controller's progress measure.
func countBegins(dir string) int {
	names, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	n := 0
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		n += strings.Count(string(b), `"ev":"begin"`)
	}
	return n
}
