package sqllock

import "github.com/advisorylock/go-advisory-lock/keyspace"

// ElectionKeys gives the external tests the keys of e's lock and of its
// handover's locks: evidence, waiting (see election_handover.go); the two
// are zero Keys when e has no handover.
func ElectionKeys(e *Election) (lock, evidence, waiting keyspace.Key) {
	return e.m.t.Key, e.evidenceKey, e.waitingKey
}
