// Name -> retention policy factory.
#include <stdexcept>
#include <utility>

#include "pyserve/retention.h"

namespace pyserve {

namespace {
using Factory = std::unique_ptr<Retention> (*)(const SchedulerConfig&);
const std::vector<std::pair<std::string, Factory>>& registry() {
  static const std::vector<std::pair<std::string, Factory>> r = {
      {"lru", &make_lru_retention},
      {"ttl", &make_ttl_retention},
      {"program", &make_program_retention},
  };
  return r;
}
}  // namespace

std::vector<std::string> retention_names() {
  std::vector<std::string> out;
  for (const auto& [name, f] : registry()) out.push_back(name);
  return out;
}

std::unique_ptr<Retention> make_retention(const SchedulerConfig& cfg) {
  for (const auto& [name, f] : registry())
    if (name == cfg.kv_retention) return f(cfg);
  throw std::invalid_argument("unknown kv_retention '" + cfg.kv_retention + "'");
}

}  // namespace pyserve
