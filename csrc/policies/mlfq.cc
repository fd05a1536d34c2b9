// mlfq: program-agnostic multi-level feedback queue (FastServe-style baseline). Every new call
// enters the top queue and is demoted as it exhausts each queue's quantum.
#include "pyserve/policies.h"
#include "pyserve/queued_policy.h"

namespace pyserve {

namespace {
class Mlfq final : public QueuedPolicy {
 public:
  using QueuedPolicy::QueuedPolicy;
  const char* name() const override { return "mlfq"; }

 protected:
  double entry_value(const Request&) const override { return 0.0; }
};
}  // namespace

std::unique_ptr<Policy> make_mlfq(const SchedulerConfig& cfg) {
  return std::make_unique<Mlfq>(cfg);
}

}  // namespace pyserve
