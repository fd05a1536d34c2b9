// Process table of agentic programs (Autellix): per-program service, waits and activity.
#pragma once
#include <cstddef>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pyserve/service_distribution.h"

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
  bool implicit = true;    // created by a call, not by start_program
  bool ended = false;      // end_program called while calls were active (the entry is retired)
  int service_class = -1;  // gittins: size class (first call's ltr-score bucket), -1 = unknown
  // The last call ended with a tool call: the agent runs the tool and calls again with the same
  // context (KV retention may keep its blocks). Cleared when the program's next call arrives.
  bool coming_back = false;
  double idle_key = -1.0;  // NOTE: the key under which it sits in the idle index; < 0 if absent

  /// Last activity: arrival of its newest call or completion of its latest one.
  double last_activity() const {
    return last_arrival > last_completion ? last_arrival : last_completion;
  }
};

/// start() at the configured cap of live programs (servers answer HTTP 429).
struct ProgramTableFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// program id -> entry. Shared (shared_ptr) by every scheduler behind one router, so a call's
/// priority reflects service its program received on any engine.
///
/// Costs: start, end, call_arrived and call_finished are O(1) on average plus O(log n) for the
/// idle index; collect() is O(k log n) for k expired programs (it never scans the table).
/// Ending a program frees its id at once: an entry with running calls is retired (kept, out of
/// the id index, until its last call finishes), so a later start or call with the same id gets
/// a fresh entry and never the old program's state.
/// NOTE: schedulers sharing a table must run on one thread (or be serialised). Membership
/// queries (contains, find, size, num_retired, ids) may come from other threads: every change to
/// the set of entries (live, retired, expired) holds `mu_`. Entry fields and the idle index are
/// only touched by the schedulers' thread.
/// NOTE: entries live in unique_ptrs, so ProgramEntry& stays valid while the entry exists (the
/// table never drops an entry with active calls).
class ProgramTable {
 public:
  /// `max_programs` caps live programs for start() (0: no cap).
  explicit ProgramTable(double ttl_s = 600.0, size_t max_programs = 0)
      : ttl_s_(ttl_s), max_programs_(max_programs) {}

  /// Explicit start; throws std::invalid_argument if the id is live and ProgramTableFull at the
  /// cap.
  void start(const std::string& id, double now);
  /// Explicit end; throws std::invalid_argument for an unknown id. The id is free at once; with
  /// active calls the retired entry goes when the last one finishes.
  void end(const std::string& id);
  /// Whether the id names a live (started or called, not ended, not expired) program.
  bool contains(const std::string& id) const {
    std::lock_guard<std::mutex> lock(mu_);
    return live_.count(id) != 0;
  }
  /// The live entry of `id`, or nullptr.
  const ProgramEntry* find(const std::string& id) const;
  /// The live entry for a new call (created implicitly when missing); counts the call as active.
  ProgramEntry& call_arrived(const std::string& id, double now);
  /// The live entry of `id` (created implicitly when missing) without counting a call.
  ProgramEntry& touch(const std::string& id, double now);
  /// Folds a finished or aborted call's service and wait into the program it arrived in.
  void call_finished(ProgramEntry& e, double call_service, double call_wait, double now);
  /// The same by id (calls accounted elsewhere, e.g. on Ray replicas): a retired generation of
  /// the id that still has calls takes it first, else the live entry; unknown ids are ignored.
  void call_finished(const std::string& id, double call_service, double call_wait, double now);
  /// Marks a live program as coming back (its last call ended with a tool call); false for an
  /// unknown id. The program's next call_arrived clears the mark.
  bool mark_coming_back(const std::string& id);
  /// Whether the program is marked as coming back (false for an unknown id).
  bool coming_back(const std::string& id) const;
  /// Removes idle programs: no active call and no activity for ttl seconds. Returns how many.
  int collect(double now);
  /// Live programs (retired entries excluded).
  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return live_.size();
  }
  /// Retired entries: ended programs whose calls still run.
  size_t num_retired() const;
  double ttl() const { return ttl_s_; }
  void set_ttl(double ttl_s) { ttl_s_ = ttl_s; }
  size_t max_programs() const { return max_programs_; }
  void set_max_programs(size_t n) { max_programs_ = n; }
  std::vector<std::string> ids() const;
  /// Throws std::logic_error when the idle index disagrees with the entries.
  void check() const;
  /// Sizes (critical-path service) of the programs that completed: ended explicitly, untagged
  /// calls that finished, or idle programs collected by TTL (gittins learns from it).
  const ServiceDistribution& service() const { return service_; }
  ServiceDistribution& service() { return service_; }
  /// An untagged call finished: its one-call program `e` (kept out of the table) takes the
  /// call's service and wait, and its size is learned, as call_finished does for tagged calls.
  void solo_finished(ProgramEntry& e, double call_service, double call_wait, double now);

 private:
  // NOTE: create, erase_live and completed run with mu_ held.
  ProgramEntry& create(const std::string& id, double now);
  void set_idle(ProgramEntry& e);
  void unset_idle(ProgramEntry& e);
  void erase_live(const std::string& id);
  void finish_entry(ProgramEntry& e, double call_service, double call_wait, double now);
  /// A program leaves the table: its size joins the distribution (if it got any service).
  void completed(const ProgramEntry& e);

  double ttl_s_;
  size_t max_programs_;
  mutable std::mutex mu_;  // NOTE: guards live_, retired_ membership and service_
  ServiceDistribution service_;
  std::unordered_map<std::string, std::unique_ptr<ProgramEntry>> live_;
  // id -> retired generations with running calls, oldest first (usually zero or one).
  std::unordered_map<std::string, std::vector<std::unique_ptr<ProgramEntry>>> retired_;
  std::set<std::pair<double, const ProgramEntry*>> idle_;  // live entries without calls
};

}  // namespace pyserve
