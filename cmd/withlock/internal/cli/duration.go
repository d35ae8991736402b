package cli

import (
	"errors"
	"math"
	"regexp"
	"strconv"
	"time"
)

// A secondsValue is a duration flag. It takes a bare number of seconds, as
// flock(1) does (5, 0.5), or a Go duration (500ms, 2s, 1m30s).
type secondsValue time.Duration

func (d *secondsValue) set(s string) error {
	v, err := parseSeconds(s)
	if err != nil {
		return err
	}
	*d = secondsValue(v)
	return nil
}

func (*secondsValue) isBool() bool { return false }

// decimal matches a plain decimal number: 5, -1, 0.5, .5, 5.
var decimal = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$`)

// errDuration says what a duration flag takes.
var errDuration = errors.New("want seconds (5, 0.5) or a duration (500ms, 2s, 1m30s)")

// parseSeconds parses a duration flag's value: a decimal number of seconds,
// rounded to the nanosecond, or a Go duration.
func parseSeconds(s string) (time.Duration, error) {
	if !decimal.MatchString(s) {
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, errDuration
		}
		return d, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	ns := math.Round(f * float64(time.Second))
	if err != nil || ns >= math.MaxInt64 || ns <= math.MinInt64 {
		return 0, errors.New("too long: at most 292 years")
	}
	return time.Duration(ns), nil
}
