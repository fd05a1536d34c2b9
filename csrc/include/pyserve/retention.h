// KV retention policies: what happens to a program's KV between its calls (docs/sessions.md).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "pyserve/config.h"
#include "pyserve/program_table.h"

namespace pyserve {

/// What the scheduler tells a retention policy about one program's KV.
struct RetentionView {
  double now = 0.0;
  const ProgramEntry* program = nullptr;  // null: unknown (untagged, collected or ended)
  bool ended = false;                     // end_program ended it: it will not be back
  int context_tokens = 0;                 // tokens of the finished call (prompt + output)
  double gpu_free_fraction = 1.0;         // free (incl. cached) GPU blocks / all GPU blocks
};

/// Decides, for the KV a finished call leaves behind: how long its GPU blocks stay pinned (held
/// as if a call still used them), in what order pins give way under memory pressure, and whether
/// a cached block evicted from the GPU moves to the host tier or is dropped.
/// NOTE: hooks run on the core's thread inside schedule()/update().
class Retention {
 public:
  virtual ~Retention() = default;
  virtual const char* name() const = 0;
  /// Seconds to pin a finished call's cached GPU blocks; <= 0: no pin.
  virtual double pin_seconds(const RetentionView& v) const { return 0.0; }
  /// Rank of a pin under pressure: the lowest value is released first.
  virtual double pin_value(const RetentionView& v, double expiry) const { return expiry; }
  /// A cached block of this program is evicted from the GPU: keep it on the host tier?
  virtual bool keep_on_host(const RetentionView& v) const { return true; }
  /// Copy host-tier blocks of waiting calls back to the GPU ahead of their admission?
  virtual bool prefetch() const { return false; }
  /// A call of program `p` arrives; `p` is the entry as it was before (not yet counting it).
  virtual void on_call_arrival(const ProgramEntry& p, double now) {}
};

std::unique_ptr<Retention> make_lru_retention(const SchedulerConfig& cfg);
std::unique_ptr<Retention> make_ttl_retention(const SchedulerConfig& cfg);
std::unique_ptr<Retention> make_program_retention(const SchedulerConfig& cfg);

/// Builds cfg.kv_retention; throws std::invalid_argument for an unknown name.
std::unique_ptr<Retention> make_retention(const SchedulerConfig& cfg);
/// Names accepted by make_retention.
std::vector<std::string> retention_names();

}  // namespace pyserve
