// ltr: learning to rank (arXiv 2408.15792). Each request carries a score from the prompt ranker
// (lower = predicted shorter) and the shortest-predicted runs first. Starvation rule: a request
// left unscheduled for starve_steps consecutive steps runs at top priority for its next
// starve_quantum scheduled steps.
#include <limits>

#include "pyserve/policies.h"

namespace pyserve {

namespace {
class Ltr final : public Policy {
 public:
  explicit Ltr(const SchedulerConfig& cfg)
      : starve_steps_(cfg.starve_steps), starve_quantum_(cfg.starve_quantum) {}
  const char* name() const override { return "ltr"; }
  double primary(const Request& r) const override {
    return r.boost_steps_left > 0 ? -std::numeric_limits<double>::max() : r.spec.ltr_score;
  }
  void on_service(Request& r, double) override {
    if (r.boost_steps_left > 0) --r.boost_steps_left;
  }
  bool needs_refresh() const override { return true; }
  bool refresh(Request& r, double, int64_t step) override {
    if (r.boost_steps_left > 0) return false;
    int64_t since = step - std::max(r.last_scheduled_step, r.enqueue_step);
    if (since < starve_steps_) return false;
    r.boost_steps_left = starve_quantum_;
    return true;
  }

 private:
  int starve_steps_, starve_quantum_;
};
}  // namespace

std::unique_ptr<Policy> make_ltr(const SchedulerConfig& cfg) { return std::make_unique<Ltr>(cfg); }

}  // namespace pyserve
