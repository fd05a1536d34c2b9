// Program-aware load balancer for several engine replicas (Autellix): where a call runs.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "pyserve/program_table.h"

namespace pyserve {

enum class RoutePolicy : int8_t { kLocality = 0, kRoundRobin = 1, kLeastLoaded = 2 };
enum class LoadSignal : int8_t { kCalls = 0, kLlumnix = 1 };

struct RouterConfig {
  // locality | round_robin | least_loaded
  std::string policy = "locality";
  // calls: fewest calls in the engine, ties by KV headroom.
  // llumnix: highest (free blocks - blocks needed by queued calls) / (calls + 1).
  std::string load_signal = "calls";
  // locality: a call of at most this many prompt tokens goes to the least-loaded engine; a
  // longer one to the engine holding its program's context.
  int short_call_tokens = 2048;
  int block_size = 16;  // tokens per KV block (converts prompt tokens to block demand)

  /// Throws std::invalid_argument naming the first bad field.
  void validate() const;
  RoutePolicy route_policy() const;
  LoadSignal signal() const;
};

/// What the router knows about one engine.
struct EngineLoad {
  bool alive = true;
  int calls = 0;              // routed here and not finished
  int queued = 0;             // of those, not started yet
  int64_t queued_blocks = 0;  // KV blocks the queued calls' prompts need
  int free_blocks = 0;        // last report from the engine
  int total_blocks = 0;       // last report from the engine
  int64_t routed = 0;         // calls ever routed here
};

/// Decides the engine of each call and tracks calls until they finish.
/// NOTE: not thread-safe; one thread (the router's event loop or the simulator) drives it.
class LoadBalancer {
 public:
  /// `programs` (may be null) is the global program table; stickiness of a program that left it
  /// (ended or collected) is forgotten. Throws std::invalid_argument for a bad config.
  LoadBalancer(const RouterConfig& cfg, int num_engines,
               std::shared_ptr<ProgramTable> programs = nullptr);

  /// Picks a live engine for a new call and records the call there. An empty program id is a
  /// one-call program (never sticky). Throws std::invalid_argument for a duplicate call id or
  /// negative prompt_tokens, std::runtime_error when no engine is alive.
  int route(const std::string& call_id, const std::string& program_id, int prompt_tokens);
  /// The call began running (its prompt no longer counts as queued demand). Idempotent.
  void started(const std::string& call_id);
  /// The call finished, was aborted or failed: it leaves its engine. Throws for an unknown id.
  void finished(const std::string& call_id);
  /// The engine's current KV state (free and total GPU blocks).
  void report(int engine, int free_blocks, int total_blocks);
  /// Marks an engine dead: never chosen again, stickiness to it is dropped. Returns the calls
  /// still in flight there (they stay tracked until `finished` is called for each).
  std::vector<std::string> mark_dead(int engine);
  /// Forgets the program's sticky engine (the program ended).
  void forget_program(const std::string& program_id);
  /// Forgets stickiness of programs no longer in the program table; returns how many.
  int collect();

  int num_engines() const { return int(engines_.size()); }
  int num_alive() const;
  int num_calls() const { return int(calls_.size()); }
  const EngineLoad& engine(int e) const;
  /// Engine of an in-flight call, -1 if unknown.
  int engine_of(const std::string& call_id) const;
  /// Sticky engine of a program, -1 if none.
  int sticky_engine(const std::string& program_id) const;
  size_t num_sticky() const { return sticky_.size(); }
  /// The configured load value of an engine; lower means less loaded.
  double load(int engine) const;
  const RouterConfig& config() const { return cfg_; }
  /// Throws std::logic_error if the bookkeeping is inconsistent.
  void check() const;

 private:
  struct Call {
    int engine = -1;
    int64_t blocks = 0;  // prompt blocks, counted in queued_blocks until started
    bool started = false;
  };
  void require_engine(int e) const;
  bool less_loaded(int a, int b) const;
  int least_loaded() const;
  int next_round_robin();

  RouterConfig cfg_;
  RoutePolicy policy_;
  LoadSignal signal_;
  std::shared_ptr<ProgramTable> programs_;
  std::vector<EngineLoad> engines_;
  std::unordered_map<std::string, Call> calls_;
  std::unordered_map<std::string, int> sticky_;  // program id -> engine holding its context
  int rr_next_ = 0;
  size_t next_collect_ = 64;  // collect when sticky_ reaches this size (amortised O(1))
};

/// Raises the entry of `program_id` in a replica's local table to at least the global values,
/// creating it when missing (active calls unchanged), so the replica's policy sees the service
/// the program received on every engine. Throws std::invalid_argument for an empty id or a
/// negative value.
void sync_program(ProgramTable& local, const std::string& program_id, double service,
                  double critical, double wait, double now);

std::vector<std::string> route_policy_names();

}  // namespace pyserve
