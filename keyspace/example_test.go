package keyspace_test

import (
	"fmt"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

func ExampleDefault() {
	fmt.Println(keyspace.Default.Key("dbmigration"))
	// Output: pair(-1682085387,-1149921686)
}

func ExampleInt64() {
	k := keyspace.Int64(42)
	classid, objid, objsubid := k.LockTag()
	fmt.Println(k, k.Space(), classid, objid, objsubid)
	// Output: int64(42) int64 0 42 1
}

func ExampleFunc() {
	// A scheme of your own: every tenant's jobs in its own first integer.
	const tenant = 7
	perTenant := keyspace.Func(func(name string) keyspace.Key {
		_, b, _ := keyspace.Node.Key(name).Pair()
		return keyspace.Pair(tenant, b)
	})
	fmt.Println(perTenant.Key("nightly-report"))
	// Output: pair(7,-2017152350)
}

func ExampleParse() {
	k, err := keyspace.Parse("pair(1,-2)")
	fmt.Println(k, err)
	_, err = keyspace.Parse("one")
	fmt.Println(err)
	// Output:
	// pair(1,-2) <nil>
	// keyspace: invalid syntax: "one": want a decimal int64, as in "42"
}
