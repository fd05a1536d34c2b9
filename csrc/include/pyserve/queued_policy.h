// Multi-level queues with quantum demotion and program-level anti-starvation: the machinery
// shared by mlfq, plas and atlas. Subclasses choose the queue a new call enters.
#pragma once
#include <vector>

#include "pyserve/policy.h"

namespace pyserve {

class QueuedPolicy : public Policy {
 public:
  explicit QueuedPolicy(const SchedulerConfig& cfg);

  /// Queue index, lower runs earlier (FCFS inside a queue through the scheduler's tie-breaks).
  double primary(const Request& r) const override { return r.queue; }
  double preempt_class(const Request& r) const override { return r.queue; }
  void on_arrival(Request& r, double now) override;
  /// Charges the call; demotes it one queue when it exhausts its queue's quantum.
  void on_service(Request& r, double seconds) override;
  bool needs_refresh() const override { return beta_ > 0.0; }
  /// Promotes a starving call to the top queue, resetting only the call's counters.
  bool refresh(Request& r, double now, int64_t step) override;

  /// Queue holding priority value v: the i with B_i <= v < B_{i+1}.
  int queue_of(double v) const;
  double quantum(int q) const { return quanta_[q]; }
  int num_queues() const { return static_cast<int>(quanta_.size()); }

 protected:
  /// Priority value a new call enters with (its queue is queue_of(value)).
  virtual double entry_value(const Request& r) const = 0;

 private:
  std::vector<double> bounds_;  // B_0 = 0 < B_1 < ... (K entries; last queue unbounded)
  std::vector<double> quanta_;
  double beta_;
};

}  // namespace pyserve
