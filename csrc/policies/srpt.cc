// srpt: shortest remaining processing time at program level, from an oracle: each call carries
// its program's remaining work when it is issued (program_remaining_hint). An upper bound for
// simulation; calls without a hint go last.
#include <limits>

#include "pyserve/policies.h"

namespace pyserve {

namespace {
class Srpt final : public Policy {
 public:
  const char* name() const override { return "srpt"; }
  double primary(const Request& r) const override {
    if (r.spec.program_remaining_hint < 0) return std::numeric_limits<double>::max();
    return r.spec.program_remaining_hint - r.num_output();
  }
};
}  // namespace

std::unique_ptr<Policy> make_srpt(const SchedulerConfig&) { return std::make_unique<Srpt>(); }

}  // namespace pyserve
