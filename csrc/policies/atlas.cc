// atlas (Autellix, multi-threaded programs): priority is the program's critical-path service.
// Each call snapshots the program's scalar on arrival; on completion the scalar becomes
// max(scalar, snapshot + call service). Parallel calls of a program thus share one priority.
#include <algorithm>

#include "pyserve/policies.h"
#include "pyserve/queued_policy.h"

namespace pyserve {

namespace {
class Atlas final : public QueuedPolicy {
 public:
  using QueuedPolicy::QueuedPolicy;
  const char* name() const override { return "atlas"; }

  void on_arrival(Request& r, double now) override {
    r.snapshot = r.program ? r.program->critical : 0.0;
    QueuedPolicy::on_arrival(r, now);
  }
  void on_finish(Request& r, double now) override {
    if (r.program) r.program->critical = std::max(r.program->critical, r.snapshot + r.service);
  }

 protected:
  double entry_value(const Request& r) const override { return r.snapshot; }
};
}  // namespace

std::unique_ptr<Policy> make_atlas(const SchedulerConfig& cfg) {
  return std::make_unique<Atlas>(cfg);
}

}  // namespace pyserve
