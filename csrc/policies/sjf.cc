// sjf: shortest (remaining) job first from an oracle or hint of the call's output length, given
// with the request as remaining_hint (total output tokens). Calls without a hint go last.
#include <algorithm>
#include <limits>

#include "pyserve/policies.h"

namespace pyserve {

namespace {
class Sjf final : public Policy {
 public:
  const char* name() const override { return "sjf"; }
  double primary(const Request& r) const override {
    if (r.spec.remaining_hint < 0) return std::numeric_limits<double>::max();
    return std::max(0.0, r.spec.remaining_hint - r.num_output());
  }
};
}  // namespace

std::unique_ptr<Policy> make_sjf(const SchedulerConfig&) { return std::make_unique<Sjf>(); }

}  // namespace pyserve
