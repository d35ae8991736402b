package keyspace

// ExplicitInt64 reads the lock name as a bigint key rather than hashing it:
// "42" or "int64(42)", as [Parse] reads them, is the key int64(42). Any other
// name, including one that Parse reads as a pair, yields the zero Key, which
// sqllock reports as an error naming the lock. Use it to contend with
// software that locks fixed numeric keys.
//
// No two names that parse to different numbers collide.
var ExplicitInt64 Strategy = Func(explicitInt64Key)

// ExplicitPair reads the lock name as a key in the (int, int) space rather
// than hashing it: "1,-2" or "pair(1,-2)", as [Parse] reads them, is the key
// pair(1,-2). Any other name, including one that Parse reads as a bigint,
// yields the zero Key, which sqllock reports as an error naming the lock.
//
// No two names that parse to different pairs collide.
var ExplicitPair Strategy = Func(explicitPairKey)

func explicitInt64Key(name string) Key { return parseIn(name, SpaceInt64) }
func explicitPairKey(name string) Key  { return parseIn(name, SpacePair) }

// parseIn returns Parse(name) if it succeeds with a key in space, else the
// zero Key.
func parseIn(name string, space Space) Key {
	k, err := Parse(name)
	if err != nil || k.Space() != space {
		return Key{}
	}
	return k
}
