// Process table of agentic programs (Autellix): per-program service, waits and activity.
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace pyserve {

struct ProgramEntry {
  std::string id;
  double service = 0.0;   // attained service: summed service of its completed calls (PLAS)
  double critical = 0.0;  // critical-path scalar (ATLAS)
  double wait = 0.0;      // summed waiting time of its completed calls
  int active_calls = 0;
  double last_arrival = 0.0;
  double last_completion = 0.0;
  int engine_id = -1;
  bool implicit = true;  // created by a call, not by start_program
  bool ended = false;    // end_program called while calls were active
  // The last call ended with a tool call: the agent runs the tool and calls again with the same
  // context (KV retention may keep its blocks). Cleared when the program's next call arrives.
  bool coming_back = false;
};

/// program id -> entry. Shared (shared_ptr) by every scheduler behind one router, so a call's
/// priority reflects service its program received on any engine.
/// NOTE: schedulers sharing a table must run on one thread (or be serialised). Membership
/// queries (contains, size, ids) may come from other threads: every change to the set of
/// entries holds `mu_`. Entry fields are only touched by the schedulers' thread.
class ProgramTable {
 public:
  explicit ProgramTable(double ttl_s = 600.0) : ttl_s_(ttl_s) {}

  /// Explicit start; throws std::invalid_argument if the id is already live.
  void start(const std::string& id, double now);
  /// Explicit end; throws std::invalid_argument for an unknown id. With active calls the entry
  /// goes when the last one finishes.
  void end(const std::string& id);
  bool contains(const std::string& id) const {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_.count(id) != 0;
  }
  const ProgramEntry* find(const std::string& id) const;
  /// The entry for a new call (created implicitly when missing); counts the call as active.
  ProgramEntry& call_arrived(const std::string& id, double now);
  /// Folds a finished or aborted call's service and wait into its program.
  void call_finished(const std::string& id, double call_service, double call_wait, double now);
  /// Marks a live program as coming back (its last call ended with a tool call); false for an
  /// unknown id. The program's next call_arrived clears the mark.
  bool mark_coming_back(const std::string& id);
  /// Whether the program is marked as coming back (false for an unknown id).
  bool coming_back(const std::string& id) const;
  /// Removes idle programs: no active call and no activity for ttl seconds. Returns how many.
  int collect(double now);
  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_.size();
  }
  double ttl() const { return ttl_s_; }
  void set_ttl(double ttl_s) { ttl_s_ = ttl_s; }
  std::vector<std::string> ids() const;

 private:
  double ttl_s_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, ProgramEntry> entries_;
};

}  // namespace pyserve
