// Command withlock runs a command while holding a PostgreSQL advisory lock,
// so that only one such command runs at a time across every host that shares
// the database.
//
//	withlock [flags] <lockName> -- <command> [args...]
//	withlock status <lockName> [--db <conn>] [--keyspace <name>] [--json]
//
// See docs/withlock.md or withlock --help for the manual.
package main

import (
	"context"
	"os"

	"github.com/advisorylock/go-advisory-lock/cmd/withlock/internal/cli"
)

func main() {
	if status, ok := cli.Guard(); ok {
		os.Exit(status)
	}
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
