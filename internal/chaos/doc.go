// Package chaos holds the fault-injection suite of prefetchd: tests that run
// the real binaries (prefetchd, devbroker) next to real redis-server
// processes, inject faults (kill -9, SIGSTOP, broker and cache restarts,
// replica loss) while a producer sends a known stream of clicks, and compare
// what the service stored, warmed and reported against that ground truth.
//
// The package has no code outside its tests. `make test` runs the short set;
// `make chaos` (build tag chaos) runs the long soak with Redis Cluster. See
// README.md for the scenarios and what is checked.
package chaos
