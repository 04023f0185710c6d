//go:build chaos

package chaos

import (
	"time"

	"github.com/prefetchd/prefetchd/features"
)

// setName names the set of scenarios this build runs.
const setName = "long (make chaos)"

// streamLoad is the long set's stream: every scenario of the short set
// with five times the users and a longer stream.
func streamLoad() load { return load{users: 100, clicks: 20, rate: 80} }

// longScenarios add Redis Cluster: a service given one seed address only
// (it must follow MOVED redirections), and a master killed for 8 s.
func longScenarios(l load) []scenario {
	return []scenario{
		{"cluster_single_seed", envConfig{history: features.BackendRedis, cluster: true, seedOnly: true, replicas: 1, load: l}, func(e *env) {
			e.prod.background(e.t, l.events())()
			e.verify(expect{exactCounts: true})
		}},
		{"cluster_master_down_8s", envConfig{history: features.BackendRedis, cluster: true, replicas: 1, load: l}, func(e *env) {
			wait := e.prod.background(e.t, l.events())
			e.prod.waitAcked(e.t, l.events()/6, time.Minute)
			e.outage(e.redis[1], outageFor)
			wait()
			e.verify(expect{exactCounts: true})
		}},
	}
}
