#include "pyserve/queued_policy.h"

#include <algorithm>
#include <limits>

namespace pyserve {

QueuedPolicy::QueuedPolicy(const SchedulerConfig& cfg) : beta_(cfg.starvation_beta) {
  double b = 0.0, q = cfg.quantum_base;
  for (int i = 0; i < cfg.num_queues; ++i) {
    bounds_.push_back(b);
    quanta_.push_back(i + 1 == cfg.num_queues ? std::numeric_limits<double>::infinity() : q);
    b += q;
    q *= cfg.quantum_growth;
  }
}

int QueuedPolicy::queue_of(double v) const {
  auto it = std::upper_bound(bounds_.begin(), bounds_.end(), v);
  return std::max(0, int(it - bounds_.begin()) - 1);
}

void QueuedPolicy::on_arrival(Request& r, double now) {
  r.queue = queue_of(entry_value(r));
  r.queue_service = r.call_service = r.call_wait = 0.0;
}

void QueuedPolicy::on_service(Request& r, double seconds) {
  r.call_service += seconds;
  r.queue_service += seconds;
  if (r.queue_service >= quanta_[r.queue] && r.queue + 1 < num_queues()) {
    ++r.queue;
    r.queue_service = 0.0;
  }
}

bool QueuedPolicy::refresh(Request& r, double now, int64_t step) {
  if (r.queue == 0) return false;
  const double w_call = r.call_wait + (now - r.wait_since);
  const double w_prog = r.program ? r.program->wait : 0.0;
  const double t = (r.program ? r.program->service : 0.0) + r.call_service;
  if (w_prog + w_call < beta_ * std::max(t, 1e-9)) return false;
  r.queue = 0;
  // Only the call's counters reset; the program keeps its attained service and waits.
  r.queue_service = r.call_service = 0.0;
  r.call_wait = 0.0;
  r.wait_since = now;
  return true;
}

}  // namespace pyserve
