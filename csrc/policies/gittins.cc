// gittins: a call's key is the Gittins rank of its program's attained service, under the size
// distribution of completed programs that the program table learns online (per size class).
//
// Mapping to keys (lower runs earlier): the Gittins index G(a) is the best completion rate per
// unit of further service, sup over Δ of P(S - a <= Δ | S > a) / E[min(S - a, Δ) | S > a]; the
// key is its inverse, the rank 1/G(a) in seconds, so a higher index runs earlier. Known sizes
// give rank = remaining size (SRPT); exponential sizes give a constant rank (FCFS by the
// arrival tie-break); a decreasing hazard rate gives least-attained-service first.
//
// Attained service is ATLAS's critical path: the program's critical-path scalar when the call
// arrived plus the call's own service so far, so parallel calls of a threaded program share it
// and a single-threaded program's equals its summed service.
//
// Anti-starvation is PLAS's: new calls enter the last (unbounded) queue; a call whose program
// waited beta times its service is promoted to queue 0 and runs ahead of every ranked call
// until it has used queues 0..K-2's quanta. Needs num_queues >= 2 (one queue: no promotion).
//
// Size classes: the first call's ltr score, bucketed by its quantile among the last kWindow
// first calls into gittins_classes classes (0 = pooled only). A class ranks from its own
// histogram once it has ServiceDistribution::kMinCount programs, from the pooled one before.
#include <algorithm>
#include <cmath>
#include <deque>

#include "pyserve/policies.h"
#include "pyserve/queued_policy.h"

namespace pyserve {

namespace {
class Gittins final : public QueuedPolicy {
 public:
  explicit Gittins(const SchedulerConfig& cfg)
      : QueuedPolicy(cfg), classes_(cfg.gittins_classes), last_(cfg.num_queues - 1) {}
  const char* name() const override { return "gittins"; }

  void attach(ProgramTable& programs) override { service_ = &programs.service(); }

  void on_arrival(Request& r, double now) override {
    r.snapshot = r.program ? r.program->critical : 0.0;
    QueuedPolicy::on_arrival(r, now);  // enters the last queue: entry_value is +inf
    if (r.program && r.program->critical == 0.0 && r.program->service_class < 0)
      r.program->service_class = classify(r.spec.ltr_score);
  }
  void on_finish(Request& r, double now) override {
    if (r.program) r.program->critical = std::max(r.program->critical, r.snapshot + r.service);
  }

  double primary(const Request& r) const override {
    if (r.queue < last_) return r.queue - last_ - 1.0;  // promoted: ahead of every rank (>= 0)
    return service_->rank(r.program ? r.program->service_class : -1, r.snapshot + r.service);
  }
  /// Proactive preemption compares factor-of-two rank classes (promoted calls: their queue).
  double preempt_class(const Request& r) const override {
    const double p = primary(r);
    return p < 0.0 ? p : std::floor(std::log2(std::max(p, 1e-6)));
  }

  bool needs_refresh() const override { return true; }
  /// PLAS's promotion; after the distribution changed, also re-ranks every queued call (once per
  /// step that follows a completion: one O(1) rank lookup per queued call).
  bool refresh(Request& r, double now, int64_t step) override {
    if (step != last_step_) {
      last_step_ = step;
      recheck_ = service_->version() != seen_version_;
      seen_version_ = service_->version();
    }
    if (QueuedPolicy::needs_refresh() && QueuedPolicy::refresh(r, now, step)) return true;
    return recheck_ && primary(r) != r.key.k0;
  }

 protected:
  double entry_value(const Request& r) const override { return HUGE_VAL; }

 private:
  static constexpr size_t kWindow = 256;

  int classify(double score) {
    if (classes_ <= 0) return -1;
    recent_.push_back(score);
    if (recent_.size() > kWindow) recent_.pop_front();
    double below = 0.0;
    for (double s : recent_) below += s < score ? 1.0 : (s == score ? 0.5 : 0.0);
    const int c = static_cast<int>(classes_ * below / double(recent_.size()));
    return std::min(c, classes_ - 1);
  }

  int classes_;
  int last_;
  ServiceDistribution* service_ = nullptr;
  std::deque<double> recent_;  // ltr scores of the last kWindow first calls
  int64_t last_step_ = -1;
  uint64_t seen_version_ = 0;
  bool recheck_ = false;
};
}  // namespace

std::unique_ptr<Policy> make_gittins(const SchedulerConfig& cfg) {
  return std::make_unique<Gittins>(cfg);
}

}  // namespace pyserve
