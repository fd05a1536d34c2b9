#include <functional>
#include <stdexcept>
#include <utility>

#include "pyserve/policies.h"

namespace pyserve {

namespace {
using Factory = std::unique_ptr<Policy> (*)(const SchedulerConfig&);
const std::vector<std::pair<std::string, Factory>>& registry() {
  static const std::vector<std::pair<std::string, Factory>> r = {
      {"fcfs", &make_fcfs}, {"priority", &make_priority}, {"sjf", &make_sjf},
      {"srpt", &make_srpt}, {"ltr", &make_ltr},           {"mlfq", &make_mlfq},
      {"plas", &make_plas}, {"atlas", &make_atlas},       {"gittins", &make_gittins},
  };
  return r;
}
}  // namespace

std::vector<std::string> policy_names() {
  std::vector<std::string> out;
  for (const auto& [name, f] : registry()) out.push_back(name);
  return out;
}

std::unique_ptr<Policy> make_policy(const SchedulerConfig& cfg) {
  for (const auto& [name, f] : registry())
    if (name == cfg.policy) return f(cfg);
  throw std::invalid_argument("unknown policy '" + cfg.policy + "'");
}

}  // namespace pyserve
