package sidekiq_test

import (
	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/sidekiq"
)

// The agent's own interfaces: sidekiq only has local copies, so that agent
// may import it without a cycle.
var (
	_ agent.Worker           = (*sidekiq.Worker)(nil)
	_ agent.JobWatcher       = (*sidekiq.Worker)(nil)
	_ agent.GrowthAttributor = (*sidekiq.Worker)(nil)
	_ sidekiq.Quieter        = agent.Worker(nil)
)
