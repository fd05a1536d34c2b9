// ttl (CacheTTL / Continuum style): a finished call of a live program pins its GPU blocks for
//   TTL = min(ttl_max, ttl_scale * reload_s * gpu_free_fraction),
//   reload_s = context_tokens * reload_s_per_token,
// i.e. the longer a context takes to re-prefill, the longer it is worth holding, and the fuller
// the GPU, the shorter. Under pressure the pin expiring first goes first. Evicted blocks go to the
// host tier as under lru.
#include <algorithm>

#include "pyserve/retention.h"

namespace pyserve {

namespace {
class TtlRetention : public Retention {
 public:
  explicit TtlRetention(const SchedulerConfig& cfg)
      : max_s_(cfg.retention_ttl_max_s),
        scale_(cfg.retention_ttl_scale),
        reload_(cfg.retention_reload_s_per_token) {}
  const char* name() const override { return "ttl"; }
  double pin_seconds(const RetentionView& v) const override {
    if (!v.program || v.program->ended) return 0.0;
    const double reload_s = v.context_tokens * reload_;
    return std::min(max_s_, scale_ * reload_s * v.gpu_free_fraction);
  }

 private:
  double max_s_, scale_, reload_;
};
}  // namespace

std::unique_ptr<Retention> make_ttl_retention(const SchedulerConfig& cfg) {
  return std::make_unique<TtlRetention>(cfg);
}

}  // namespace pyserve
