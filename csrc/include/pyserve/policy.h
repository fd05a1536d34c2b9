// Scheduling policy interface: a policy turns a request into a sort key (lower runs earlier).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "pyserve/config.h"
#include "pyserve/program_table.h"
#include "pyserve/request.h"

namespace pyserve {

/// A policy decides the primary key k0 of each request; the scheduler breaks ties by arrival
/// time, then fewer preemptions, then arrival order. Hooks run inside add_request / schedule /
/// update / abort on the core's thread. Keys of running requests are recomputed every step; keys
/// of queued requests only when refresh() reports a change.
class Policy {
 public:
  virtual ~Policy() = default;
  virtual const char* name() const = 0;
  /// Primary key, lower runs earlier.
  virtual double primary(const Request& r) const = 0;
  /// Coarse class used by proactive preemption: a queued call displaces a running one only when
  /// its class is strictly better (e.g. a strictly better queue). Defaults to the primary key.
  virtual double preempt_class(const Request& r) const { return primary(r); }
  /// Called once by the scheduler with the program table it uses (shared behind a router).
  virtual void attach(ProgramTable& programs) {}
  /// The call entered the core; r.program is its (possibly new) program entry.
  virtual void on_arrival(Request& r, double now) {}
  /// The call took part in a step and was charged `seconds` of service.
  virtual void on_service(Request& r, double seconds) {}
  /// The call finished (any reason, abort included), before the table folds its service in.
  virtual void on_finish(Request& r, double now) {}
  /// Whether refresh() must be called for queued requests each step.
  virtual bool needs_refresh() const { return false; }
  /// Re-evaluates a queued request (anti-starvation); returns true if its key changed.
  virtual bool refresh(Request& r, double now, int64_t step) { return false; }
};

/// Builds the policy named in cfg.policy; throws std::invalid_argument for an unknown name.
std::unique_ptr<Policy> make_policy(const SchedulerConfig& cfg);
/// Names accepted by make_policy.
std::vector<std::string> policy_names();

}  // namespace pyserve
