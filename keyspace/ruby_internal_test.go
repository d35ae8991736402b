package keyspace

import (
	"strconv"
	"testing"
)

// Ruby 3.1.2: s.to_i & 0x7fffffff, and whether Integer(s, 10) accepts s.
var rubyToIVectors = []struct {
	s      string
	v      int32
	strict bool
}{
	{"", 0, false},
	{" 42", 42, true},
	{"0d12", 12, true},
	{"0D9", 9, true},
	{"1_000", 1000, true},
	{"1__0", 1, false},
	{"_1", 0, false},
	{"-1", 2147483647, true},
	{"+7", 7, true},
	{"99999999999999999999", 1661992959, true},
	{"-99999999999999999999", 485490689, true},
	{"12abc", 12, false},
	{"\t\n 5", 5, true},
	{"0x1A", 0, false},
	{"0b1", 0, false},
	{"0_1", 1, true},
	{"1_", 1, false},
	{" - 3", 0, false},
	{"--3", 0, false},
	{"\v7", 7, true},
	{"\u00a07", 0, false},
	{"07", 7, true},
	{"0_d1", 0, false},
	{"0d", 0, false},
	{"-0d5", 2147483643, true},
	{"0d_1", 0, false},
	{"0d-1", 0, false},
	{"+-1", 0, false},
	{"+ 1", 0, false},
	{"1 ", 1, true},
	{"1\n", 1, true},
	{" 1 x", 1, false},
	{"00_1", 1, true},
	{"0__1", 0, false},
	{"0_", 0, false},
	{"-", 0, false},
	{"+", 0, false},
	{"0d0d1", 0, false},
	{"\f\r 3", 3, true},
	{"-0", 0, true},
	{"-2147483648", 0, true},
	{"2147483648", 0, true},
	{"-4294967297", 2147483647, true},
	{"１２", 0, false},
	{"_", 0, false},
	{"0", 0, true},
	{"1_2__3", 12, false},
}

func TestRubyToI31(t *testing.T) {
	for _, tt := range rubyToIVectors {
		v, strict := rubyToI31(tt.s)
		if v != tt.v || strict != tt.strict {
			t.Errorf("rubyToI31(%q) = %d, %v, want %d, %v", tt.s, v, strict, tt.v, tt.strict)
		}
	}
}

func FuzzRubyToI31(f *testing.F) {
	for _, tt := range rubyToIVectors {
		f.Add(tt.s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, strict := rubyToI31(s)
		if v < 0 {
			t.Fatalf("rubyToI31(%q) = %d: negative", s, v)
		}
		// Plain decimals Go can read must agree with their low 31 bits.
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			if want := int32(uint64(n) & 0x7fffffff); v != want || !strict {
				t.Fatalf("rubyToI31(%q) = %d, %v, want %d, true", s, v, strict, want)
			}
		}
	})
}
