// program (pyserve): retention from what the program table knows.
// - Pin a finished call's GPU blocks only when the program will be back (its call ended in a tool
//   call) and is live; pin for ~the measured think time: the median of the think times seen so
//   far (arrival of a call minus the end of its program's previous call), times 1.5, capped at
//   retention_ttl_max_s (60 s until 8 think times are measured).
// - Under pressure the pin of least value goes first: value = context tokens / ((1 + attained
//   service s) * expected think s): big contexts of young programs that come back soon stay.
// - An evicted block goes to the host tier unless its program was ended (end_program) or has
//   been idle, not coming back, for more than twice the 99th-percentile think time: such blocks
//   drop. A block whose program the table no longer knows (collected) is kept, as under lru.
// - Host-tier blocks of the head waiting call are prefetched to the GPU before its admission.
#include <algorithm>
#include <array>
#include <cmath>

#include "pyserve/retention.h"

namespace pyserve {

namespace {
/// Log-binned histogram of think times: bin i covers [0.1 * 2^(i/2), 0.1 * 2^((i+1)/2)) s.
class ThinkTimes {
 public:
  void add(double s) {
    int i = s <= 0.1 ? 0 : int(2.0 * std::log2(s / 0.1));
    ++bins_[std::clamp(i, 0, kBins - 1)];
    ++n_;
  }
  int64_t count() const { return n_; }
  /// Upper edge of the bin holding quantile q.
  double quantile(double q) const {
    int64_t want = int64_t(std::ceil(q * double(n_))), seen = 0;
    for (int i = 0; i < kBins; ++i) {
      seen += bins_[i];
      if (seen >= want) return 0.1 * std::exp2((i + 1) / 2.0);
    }
    return 0.1 * std::exp2(kBins / 2.0);
  }

 private:
  static constexpr int kBins = 40;  // up to ~10^5 s
  std::array<int64_t, kBins> bins_{};
  int64_t n_ = 0;
};

class ProgramRetention : public Retention {
 public:
  explicit ProgramRetention(const SchedulerConfig& cfg) : max_s_(cfg.retention_ttl_max_s) {}
  const char* name() const override { return "program"; }

  double pin_seconds(const RetentionView& v) const override {
    if (!v.program || v.program->ended || !v.program->coming_back) return 0.0;
    return std::min(max_s_, 1.5 * expected_think(0.5));
  }
  double pin_value(const RetentionView& v, double expiry) const override {
    const double service = v.program ? v.program->service : 0.0;
    return v.context_tokens / ((1.0 + service) * std::max(0.1, expected_think(0.5)));
  }
  bool keep_on_host(const RetentionView& v) const override {
    if (v.ended || (v.program && v.program->ended)) return false;
    if (!v.program) return true;
    if (v.program->active_calls > 0 || v.program->coming_back) return true;
    const double idle = v.now - std::max(v.program->last_arrival, v.program->last_completion);
    return idle < 2.0 * expected_think(0.99);
  }
  bool prefetch() const override { return true; }
  void on_call_arrival(const ProgramEntry& p, double now) override {
    // Only a call that follows a finished one with nothing else running measures a think time.
    if (p.active_calls == 0 && p.service > 0.0) think_.add(now - p.last_completion);
  }

 private:
  double expected_think(double q) const { return think_.count() < 8 ? 60.0 : think_.quantile(q); }
  double max_s_;
  ThinkTimes think_;
};
}  // namespace

std::unique_ptr<Retention> make_program_retention(const SchedulerConfig& cfg) {
  return std::make_unique<ProgramRetention>(cfg);
}

}  // namespace pyserve
