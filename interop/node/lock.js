// Takes a lock with the npm package advisory-lock.
//
//   node lock.js hold DATABASE_URL NAME  // lock(): prints "held", then waits
//                                        // for stdin to end
//   node lock.js try DATABASE_URL NAME   // tryLock(): prints acquired or refused
"use strict";
const advisoryLock = require("advisory-lock").default;

async function main() {
  const [mode, url, name] = process.argv.slice(2);
  const mutex = advisoryLock(url)(name);
  if (mode === "hold") {
    const unlock = await mutex.lock();
    console.log("held");
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.on("end", resolve));
    await unlock();
  } else {
    const unlock = await mutex.tryLock();
    console.log(unlock ? "acquired" : "refused");
    if (unlock) await unlock();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
