// Scheduling policy interface: a policy turns a request into a sort key (lower runs earlier).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "pyserve/config.h"
#include "pyserve/request.h"

namespace pyserve {

/// A policy decides the primary key k0 of each request; the scheduler breaks ties by arrival
/// time, then fewer preemptions, then arrival order. Policies may keep state updated through the
/// hooks below; every hook runs inside schedule() / update() / abort() on the core's thread.
class Policy {
 public:
  virtual ~Policy() = default;
  virtual const char* name() const = 0;
  /// Primary key, lower runs earlier.
  virtual double primary(const Request& r) const = 0;
  /// The request entered the core.
  virtual void on_arrival(Request& r, double now) {}
  /// The request took part in a step and was charged `seconds` of service.
  virtual void on_service(Request& r, double seconds) {}
  /// The request finished (any reason, abort included).
  virtual void on_finish(Request& r, double now) {}
  /// Whether keys of waiting requests can change while they wait (the scheduler re-sorts them).
  virtual bool dynamic_keys() const { return false; }
};

/// Builds the policy named in cfg.policy; throws std::invalid_argument for an unknown name.
std::unique_ptr<Policy> make_policy(const SchedulerConfig& cfg);
/// Names accepted by make_policy.
std::vector<std::string> policy_names();

}  // namespace pyserve
