// plas (Autellix, single-threaded programs): a call enters the queue that contains its program's
// attained service, the summed service of the program's completed calls. Programs that have
// already received a lot of service stop jumping ahead of short programs' new calls.
#include <cmath>

#include "pyserve/policies.h"
#include "pyserve/queued_policy.h"

namespace pyserve {

namespace {
class Plas final : public QueuedPolicy {
 public:
  explicit Plas(const SchedulerConfig& cfg)
      : QueuedPolicy(cfg), ltr_first_call_(cfg.plas_ltr_first_call) {}
  const char* name() const override { return "plas"; }

  void on_arrival(Request& r, double now) override {
    QueuedPolicy::on_arrival(r, now);
    r.first_call = r.program == nullptr || r.program->service == 0.0;
  }
  /// Hybrid: a first call sits in [queue, queue + 0.5) by its squashed ltr score; other calls at
  /// queue + 0.5. Preemption still compares whole queues (preempt_class).
  double primary(const Request& r) const override {
    if (!ltr_first_call_) return r.queue;
    if (!r.first_call) return r.queue + 0.5;
    const double x = r.spec.ltr_score;
    return r.queue + 0.25 * (1.0 + x / (1.0 + std::abs(x)));
  }

 protected:
  double entry_value(const Request& r) const override {
    return r.program ? r.program->service : 0.0;
  }

 private:
  bool ltr_first_call_;
};
}  // namespace

std::unique_ptr<Policy> make_plas(const SchedulerConfig& cfg) {
  return std::make_unique<Plas>(cfg);
}

}  // namespace pyserve
