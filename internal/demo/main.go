// Command demo shows withlock at work: two processes contend for one lock,
// each running a job that prints a start and an end line, and the jobs do
// not overlap. It finds PostgreSQL as the tests do (PG_CONNECTION_STRING,
// the local server, or a throwaway cluster it starts and stops).
//
//	go run ./internal/demo bin/withlock
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const lockName = "demo-nightly-report"

// job is what each process runs under the lock.
const job = `echo "[$JOB] start: I hold the lock"; sleep 2; echo "[$JOB] end"`

func run(args []string, stdout, stderr io.Writer) int {
	withlock := "bin/withlock"
	if len(args) > 0 {
		withlock = args[0]
	}
	dsn, stop, err := pgtest.Find()
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 69
	}
	defer func() {
		if err := stop(); err != nil {
			fmt.Fprintln(stderr, "demo: stopping the throwaway cluster:", err)
		}
	}()

	fmt.Fprintf(stdout, "Two processes want the lock %q at the same time:\n\n", lockName)
	var mu sync.Mutex
	var events []string // "A start", "B end", ... in the order seen
	var wg sync.WaitGroup
	codes := make([]int, 2)
	start := time.Now()
	for i, name := range []string{"A", "B"} {
		cmd := exec.Command(withlock, "-v", lockName, "--", "sh", "-c", job)
		cmd.Env = append(os.Environ(), "JOB="+name, "PG_CONNECTION_STRING="+dsn)
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = cmd.Stdout // one stream per process, in order
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(stderr, "demo:", err)
			return 1
		}
		wg.Go(func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				line := sc.Text()
				mu.Lock()
				fmt.Fprintf(stdout, "%6.3fs %s | %s\n", time.Since(start).Seconds(), name, line)
				for _, what := range []string{"start", "end"} {
					if strings.HasPrefix(line, "["+name+"] "+what) {
						events = append(events, name+" "+what)
					}
				}
				mu.Unlock()
			}
			if err := cmd.Wait(); err != nil {
				codes[i] = cmd.ProcessState.ExitCode()
			}
		})
	}
	wg.Wait()
	for i, c := range codes {
		if c != 0 {
			fmt.Fprintf(stderr, "demo: withlock %c exited %d\n", 'A'+i, c)
			return 1
		}
	}
	got := strings.Join(events, ", ")
	if got != "A start, A end, B start, B end" && got != "B start, B end, A start, A end" {
		fmt.Fprintf(stderr, "demo: the jobs overlapped: %s\n", got)
		return 1
	}
	fmt.Fprintf(stdout, "\nThe jobs ran one after the other (%s): never at the same time.\n", got)
	return 0
}
