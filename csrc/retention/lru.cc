// lru (vLLM, SGLang): no pins; every evicted cached block goes to the host tier while it has room,
// and the host tier evicts least recently freed first.
#include "pyserve/retention.h"

namespace pyserve {

namespace {
class LruRetention : public Retention {
 public:
  const char* name() const override { return "lru"; }
};
}  // namespace

std::unique_ptr<Retention> make_lru_retention(const SchedulerConfig&) {
  return std::make_unique<LruRetention>();
}

}  // namespace pyserve
