#!/usr/bin/env bash
# Two withlock processes contend for one lock. Each runs a short job that
# prints a start and an end line; the second job starts only after the
# first has ended.
set -euo pipefail
withlock=${1:-bin/withlock}

# Postgres, found the way the tests find it.
if [ -z "${PG_CONNECTION_STRING:-}" ]; then
	if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
		export PG_CONNECTION_STRING="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	else
		echo "demo: no Postgres at 127.0.0.1:5432 and PG_CONNECTION_STRING is not set;" >&2
		echo "      start one (pg_ctlcluster 15 main start) or set PG_CONNECTION_STRING" >&2
		exit 69
	fi
fi

job='echo "$(date +%T.%3N) [$JOB] start: I hold the lock"; sleep 2; echo "$(date +%T.%3N) [$JOB] end"'
echo "Two processes want the lock \"demo-nightly-report\" at the same time:"
JOB=A "$withlock" -v demo-nightly-report -- sh -c "$job" &
a=$!
JOB=B "$withlock" -v demo-nightly-report -- sh -c "$job" &
b=$!
wait "$a" "$b"
echo "The runs did not overlap: each started only after the other ended."
