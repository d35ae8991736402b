package otelsqllock

// KeyString is keyString, for tests.
var KeyString = keyString
