// plas (Autellix, single-threaded programs): a call enters the queue that contains its program's
// attained service, the summed service of the program's completed calls. Programs that have
// already received a lot of service stop jumping ahead of short programs' new calls.
#include "pyserve/policies.h"
#include "pyserve/queued_policy.h"

namespace pyserve {

namespace {
class Plas final : public QueuedPolicy {
 public:
  using QueuedPolicy::QueuedPolicy;
  const char* name() const override { return "plas"; }

 protected:
  double entry_value(const Request& r) const override {
    return r.program ? r.program->service : 0.0;
  }
};
}  // namespace

std::unique_ptr<Policy> make_plas(const SchedulerConfig& cfg) {
  return std::make_unique<Plas>(cfg);
}

}  // namespace pyserve
