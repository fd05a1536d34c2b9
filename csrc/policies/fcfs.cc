// fcfs: first come, first served. Every request has the same primary key; the scheduler's
// tie-breaks (arrival time, preemptions, arrival order) decide.
#include "pyserve/policies.h"

namespace pyserve {

namespace {
class Fcfs final : public Policy {
 public:
  const char* name() const override { return "fcfs"; }
  double primary(const Request&) const override { return 0.0; }
};
}  // namespace

std::unique_ptr<Policy> make_fcfs(const SchedulerConfig&) { return std::make_unique<Fcfs>(); }

}  // namespace pyserve
