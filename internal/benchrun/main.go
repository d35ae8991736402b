// Command benchrun runs the sqllock benchmarks for make bench, in the way
// that keeps a 2-core machine's noise out of the library-vs-reference
// ratios:
//
//   - each of the -count runs is a fresh process that measures every
//     scenario's library and reference back to back, -rounds times, each
//     measurement -benchtime long, so that both sides of a ratio are
//     measured a fraction of a second apart, not minutes apart;
//   - the order of library and reference alternates between rounds and
//     between runs;
//   - unless PG_CONNECTION_STRING names a server, the benchmarks get a
//     dedicated throwaway cluster, and on a machine with two or more CPUs
//     the server is pinned to the last CPU and the benchmarks to the
//     others (with GOMAXPROCS set to match), so that client and server
//     never compete for one core.
//
// The output, `go test -bench` lines from every run, goes to stdout and to
// the -o file, for benchstat and benchratio.
//
//	go run ./internal/benchrun -count 20 -rounds 3 -o bench.txt
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("benchrun", flag.ContinueOnError)
	fs.SetOutput(stderr)
	count := fs.Int("count", 6, "number of runs (processes); each runs every benchmark once")
	bench := fs.String("bench", ".", "benchmarks to run (go test -bench)")
	rounds := fs.Int("rounds", 3, "rounds per run: each scenario's library and reference are measured this many times, alternating")
	benchtime := fs.String("benchtime", "150ms", "go test -benchtime for each measurement")
	out := fs.String("o", "bench.txt", "file to write the benchmark output to")
	pin := fs.Bool("pin", true, "pin server and benchmarks to separate CPUs when the server is our own")
	pkg := fs.String("pkg", "./sqllock", "package whose benchmarks to run")
	if err := fs.Parse(args); err != nil {
		return 64
	}
	if *count < 1 || *rounds < 1 {
		fmt.Fprintln(stderr, "benchrun: -count and -rounds must be at least 1")
		return 64
	}
	if err := bench1(stdout, stderr, options{*count, *rounds, *bench, *benchtime, *out, *pin, *pkg}); err != nil {
		fmt.Fprintln(stderr, "benchrun:", err)
		return 1
	}
	return 0
}

type options struct {
	count, rounds    int
	bench, benchtime string
	out              string
	pin              bool
	pkg              string
}

func bench1(stdout, stderr io.Writer, o options) error {
	tmp, err := os.MkdirTemp("", "benchrun-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "bench.test")
	build := exec.Command("go", "test", "-c", "-o", bin, o.pkg)
	build.Stdout, build.Stderr = stderr, stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building the benchmarks: %w", err)
	}

	dsn := os.Getenv(pgtest.EnvConnectionString)
	server := "the server of " + pgtest.EnvConnectionString
	var clientCPUs string
	gomaxprocs := runtime.NumCPU()
	if dsn == "" {
		c, err := pgtest.StartCluster("autovacuum=off", "jit=off", "max_connections=100")
		if err != nil {
			return fmt.Errorf("starting a server for the benchmarks (set %s to use another): %w", pgtest.EnvConnectionString, err)
		}
		defer func() {
			if err := c.Destroy(); err != nil {
				fmt.Fprintln(stderr, "benchrun: stopping the server:", err)
			}
		}()
		dsn = c.DSN()
		server = fmt.Sprintf("a throwaway cluster on port %d", c.Port())
		if o.pin {
			if clientCPUs, err = pinServer(c); err != nil {
				fmt.Fprintln(stderr, "benchrun: not pinning CPUs:", err)
			} else {
				gomaxprocs = runtime.NumCPU() - 1
			}
		}
	}
	fmt.Fprintf(stderr, "benchrun: %d runs on %s; %s\n", o.count, server, placement(clientCPUs, gomaxprocs))
	dir, err := filepath.Abs(o.pkg)
	if err != nil {
		return err
	}

	f, err := os.Create(o.out)
	if err != nil {
		return err
	}
	defer f.Close()
	for i := range o.count {
		args := []string{"-test.run", "^$", "-test.bench", o.bench, "-test.benchmem", "-test.count", "1", "-rounds", strconv.Itoa(o.rounds)}
		if o.benchtime != "" {
			args = append(args, "-test.benchtime", o.benchtime)
		}
		if i%2 == 1 {
			args = append(args, "-reffirst")
		}
		name := bin
		if clientCPUs != "" {
			name, args = "taskset", append([]string{"-c", clientCPUs, bin}, args...)
		}
		cmd := exec.Command(name, args...)
		cmd.Dir = dir // where go test runs a package's tests
		cmd.Env = append(os.Environ(), pgtest.EnvConnectionString+"="+dsn, "GOMAXPROCS="+strconv.Itoa(gomaxprocs))
		cmd.Stderr = stderr
		pipe, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "benchrun: run %d of %d\n", i+1, o.count)
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		copyErr := copyRounds(io.MultiWriter(stdout, f), pipe)
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		if copyErr != nil {
			return fmt.Errorf("run %d: %w", i+1, copyErr)
		}
	}
	return f.Close()
}

// roundSuffix is what the testing package appends to a sub-benchmark run
// again under the same name: name#01, name#02, ...
var roundSuffix = regexp.MustCompile(`#\d+`)

// copyRounds copies go test output from r to w line by line, dropping the
// round suffix from benchmark names, so that benchstat and benchratio see
// each round as one more sample of the same benchmark.
func copyRounds(w io.Writer, r io.Reader) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Benchmark") {
			end := strings.IndexAny(line, " \t")
			if end < 0 {
				end = len(line)
			}
			line = roundSuffix.ReplaceAllString(line[:end], "") + line[end:]
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return sc.Err()
}

func placement(clientCPUs string, gomaxprocs int) string {
	if clientCPUs == "" {
		return fmt.Sprintf("client and server share the CPUs (GOMAXPROCS=%d)", gomaxprocs)
	}
	return fmt.Sprintf("server pinned to CPU %d, benchmarks to CPU %s (GOMAXPROCS=%d)", runtime.NumCPU()-1, clientCPUs, gomaxprocs)
}

// pinServer pins the cluster's postmaster and its children (whose
// affinity new backends inherit) to the last CPU, and returns the CPU list
// for the benchmarks. It needs Linux, taskset and two CPUs or more.
func pinServer(c *pgtest.Cluster) (clientCPUs string, err error) {
	n := runtime.NumCPU()
	if n < 2 {
		return "", errors.New("one CPU only")
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return "", err
	}
	pid, err := c.PID()
	if err != nil {
		return "", err
	}
	pids := append([]int{pid}, children(pid)...)
	server := strconv.Itoa(n - 1)
	for _, p := range pids {
		if out, err := exec.Command("taskset", "-a", "-p", "-c", server, strconv.Itoa(p)).CombinedOutput(); err != nil {
			return "", fmt.Errorf("taskset %d: %v: %s", p, err, strings.TrimSpace(string(out)))
		}
	}
	if n == 2 {
		return "0", nil
	}
	return fmt.Sprintf("0-%d", n-2), nil
}

// children returns the processes whose parent is pid, from /proc.
func children(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		if f := strings.Fields(s[i+1:]); len(f) >= 2 && f[1] == strconv.Itoa(pid) {
			kids = append(kids, p)
		}
	}
	return kids
}
