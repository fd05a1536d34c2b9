// The program-aware policy hooks without an allocator: a host scheduler that owns KV memory
// (the vLLM plugin, pyserve/integrations/vllm) reports arrivals, admissions, preemptions, executed
// steps and finishes; the same Policy objects and ProgramTable as the native Scheduler decide
// every key. Lower key runs earlier.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pyserve/config.h"
#include "pyserve/policy.h"
#include "pyserve/program_table.h"
#include "pyserve/request.h"

namespace pyserve {

class ProgramPolicy {
 public:
  /// Validates the policy fields of cfg (policy name, queues, quanta, beta, ttl); throws
  /// std::invalid_argument naming the first bad one. `programs` may be shared; null creates one.
  explicit ProgramPolicy(const SchedulerConfig& cfg,
                         std::shared_ptr<ProgramTable> programs = nullptr);

  /// A call arrived and waits. Throws std::invalid_argument for an empty or duplicate id.
  void arrive(RequestSpec spec);
  /// The call left the waiting set to run (admitted or resumed).
  void started(const std::string& request_id);
  /// The call was preempted back to the waiting set.
  void preempted(const std::string& request_id);
  /// Start of a step (as the native schedule() prelude): anti-starvation refresh of waiting calls
  /// and TTL collection of idle programs. Returns the ids whose key changed, in key order.
  std::vector<std::string> begin_step();
  /// One executed step: the tokens each call ran and the step's duration. Advances the clock by
  /// step_seconds and shares it pro rata by tokens (docs/scheduler.md). Returns the ids whose
  /// primary key changed (quantum demotions). Unknown ids are skipped (finished meanwhile).
  std::vector<std::string> charge(const std::vector<std::pair<std::string, int>>& ran,
                                  double step_seconds);
  /// Finish or abort: folds the call's service and wait into its program. Throws for unknown ids.
  void finish(const std::string& request_id);

  double primary(const std::string& request_id) const { return policy_->primary(get(request_id)); }
  double preempt_class(const std::string& request_id) const {
    return policy_->preempt_class(get(request_id));
  }
  const Request& request(const std::string& request_id) const { return get(request_id); }
  bool contains(const std::string& request_id) const { return calls_.count(request_id) != 0; }
  size_t size() const { return calls_.size(); }
  /// Moves the clock forward to t (wall-clock hosts); never backwards.
  void advance_clock(double t) { now_ = std::max(now_, t); }
  double now() const { return now_; }
  int64_t step() const { return step_; }
  const Policy& policy() const { return *policy_; }
  const SchedulerConfig& config() const { return cfg_; }
  std::shared_ptr<ProgramTable> program_table() const { return programs_; }

 private:
  const Request& get(const std::string& id) const;
  Request& get(const std::string& id) { return const_cast<Request&>(std::as_const(*this).get(id)); }
  void leave_queue(Request& r);

  SchedulerConfig cfg_;
  std::shared_ptr<ProgramTable> programs_;
  std::unique_ptr<Policy> policy_;
  // NOTE: unique_ptr keeps each Request's address stable (program pointers, policy state).
  std::unordered_map<std::string, std::unique_ptr<Request>> calls_;
  int64_t arrivals_ = 0;
  int64_t step_ = -1;  // index of the current step; the first begin_step() makes it 0
  double now_ = 0.0;
  double next_collect_ = 0.0;
};

}  // namespace pyserve
