// priority: the user's priority value (lower runs earlier), then arrival (vLLM's convention).
// NOTE: a preempted request keeps its arrival time, so it never loses its place to newcomers of
// the same priority (vllm#41951); among equal arrivals fewer preemptions go first.
#include "pyserve/policies.h"

namespace pyserve {

namespace {
class Priority final : public Policy {
 public:
  const char* name() const override { return "priority"; }
  double primary(const Request& r) const override { return r.spec.priority; }
};
}  // namespace

std::unique_ptr<Policy> make_priority(const SchedulerConfig&) {
  return std::make_unique<Priority>();
}

}  // namespace pyserve
