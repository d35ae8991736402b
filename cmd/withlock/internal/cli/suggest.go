package cli

import "strings"

// nearest returns the candidate closest to typed, for "did you mean"
// messages, or "" when none is close enough. Dashes and case do not count:
// -e finds -E, --wiat finds --wait, -tru finds --try, --dv finds --db, stat finds status. A
// candidate is close when typed starts it (three letters or more), or when
// they are at most a third of typed's length apart (at least one edit;
// none between single letters), counting a swap of neighbours as one edit.
func nearest(typed string, candidates []string) string {
	t := strings.ToLower(strings.TrimLeft(typed, "-"))
	best, bestDist := "", -1
	for _, c := range candidates {
		n := strings.ToLower(strings.TrimLeft(c, "-"))
		d := editDistance(t, n)
		switch {
		case d == 0:
		case len(t) >= 3 && strings.HasPrefix(n, t):
			d = 1
		case len(t) >= 5 && len(n) >= len(t)+2 && commonPrefix(t, n) >= len(t)-1:
			d = 2 // all but its last letter start a longer candidate: --fence, --fencing
		case len(t) < 2 || len(n) < 2 || d > max(1, len(t)/3):
			continue
		}
		if bestDist < 0 || d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b,
// in bytes: insertions, deletions, substitutions and swaps of neighbours.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 { // nothing that long is a near miss
		return max(len(a), len(b))
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// commonPrefix returns the length of the longest prefix a and b share.
func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
