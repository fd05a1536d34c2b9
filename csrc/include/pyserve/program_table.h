// Process table of agentic programs (Autellix): per-program service, waits and activity.
#pragma once
#include <memory>
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
  bool implicit = true;      // created by a call, not by start_program
  bool ended = false;        // end_program called while calls were active
  bool coming_back = false;  // its last call ended in a tool call: it will send another
};

/// program id -> entry. Shared (shared_ptr) by every scheduler behind one router, so a call's
/// priority reflects service its program received on any engine.
/// NOTE: not thread-safe; schedulers sharing a table must run on one thread (or be serialised).
class ProgramTable {
 public:
  explicit ProgramTable(double ttl_s = 600.0) : ttl_s_(ttl_s) {}

  /// Explicit start; throws std::invalid_argument if the id is already live.
  void start(const std::string& id, double now);
  /// Explicit end; throws std::invalid_argument for an unknown id. With active calls the entry
  /// goes when the last one finishes.
  void end(const std::string& id);
  bool contains(const std::string& id) const { return entries_.count(id) != 0; }
  const ProgramEntry* find(const std::string& id) const;
  /// The entry for a new call (created implicitly when missing); counts the call as active.
  ProgramEntry& call_arrived(const std::string& id, double now);
  /// Folds a finished or aborted call's service and wait into its program.
  void call_finished(const std::string& id, double call_service, double call_wait, double now);
  /// The program's current call ends in a tool call (it will be back); cleared by its next
  /// call's arrival. Unknown ids are ignored (the program may already be collected).
  void mark_coming_back(const std::string& id);
  /// Removes idle programs: no active call and no activity for ttl seconds. Returns how many.
  int collect(double now);
  size_t size() const { return entries_.size(); }
  double ttl() const { return ttl_s_; }
  void set_ttl(double ttl_s) { ttl_s_ = ttl_s; }
  std::vector<std::string> ids() const;

 private:
  double ttl_s_;
  std::unordered_map<std::string, ProgramEntry> entries_;
};

}  // namespace pyserve
