//go:build !chaos

package chaos

// setName names the set of scenarios this build runs.
const setName = "short (make test)"

// streamLoad is the short set's stream: a few hundred events, long enough
// that an 8 s outage falls in its middle.
func streamLoad() load { return load{users: 20, clicks: 15, rate: 25} }

// longScenarios are only in the long set.
func longScenarios(load) []scenario { return nil }
