// Command withpg runs a command with PG_CONNECTION_STRING set to a
// PostgreSQL server found the way the tests find one: PG_CONNECTION_STRING
// itself, the local server, or a throwaway cluster that it starts before
// the command and stops after. make test uses it for the examples module,
// which cannot import internal/pgtest.
//
//	go run ./internal/withpg -- go test ./...
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: withpg [--] command [args...]")
		return 64
	}
	dsn, stop, err := pgtest.Find()
	if err != nil {
		fmt.Fprintln(os.Stderr, "withpg:", err)
		return 69
	}
	defer func() {
		if err := stop(); err != nil {
			fmt.Fprintln(os.Stderr, "withpg: stopping the throwaway cluster:", err)
		}
	}()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), pgtest.EnvConnectionString+"="+dsn)
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "withpg:", err)
		return 1
	}
	return 0
}
