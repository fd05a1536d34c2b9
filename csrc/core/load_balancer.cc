#include "pyserve/load_balancer.h"

#include <algorithm>
#include <iterator>
#include <stdexcept>

namespace pyserve {

namespace {
void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("invalid router config: " + msg);
}

int64_t blocks_for(int tokens, int block_size) {
  return (int64_t(tokens) + block_size - 1) / block_size;
}
}  // namespace

std::vector<std::string> route_policy_names() {
  return {"locality", "round_robin", "least_loaded"};
}

void RouterConfig::validate() const {
  route_policy();
  signal();
  require(short_call_tokens >= 0,
          "short_call_tokens must be >= 0, got " + std::to_string(short_call_tokens));
  require(block_size > 0, "block_size must be > 0, got " + std::to_string(block_size));
}

RoutePolicy RouterConfig::route_policy() const {
  if (policy == "locality") return RoutePolicy::kLocality;
  if (policy == "round_robin") return RoutePolicy::kRoundRobin;
  if (policy == "least_loaded") return RoutePolicy::kLeastLoaded;
  throw std::invalid_argument("invalid router config: unknown routing policy '" + policy +
                              "' (locality, round_robin, least_loaded)");
}

LoadSignal RouterConfig::signal() const {
  if (load_signal == "calls") return LoadSignal::kCalls;
  if (load_signal == "llumnix") return LoadSignal::kLlumnix;
  throw std::invalid_argument("invalid router config: unknown load_signal '" + load_signal +
                              "' (calls, llumnix)");
}

LoadBalancer::LoadBalancer(const RouterConfig& cfg, int num_engines,
                           std::shared_ptr<ProgramTable> programs)
    : cfg_(cfg), programs_(std::move(programs)) {
  cfg_.validate();
  if (num_engines < 1)
    throw std::invalid_argument("num_engines must be >= 1, got " + std::to_string(num_engines));
  policy_ = cfg_.route_policy();
  signal_ = cfg_.signal();
  engines_.resize(num_engines);
}

void LoadBalancer::require_engine(int e) const {
  if (e < 0 || e >= num_engines())
    throw std::invalid_argument("engine " + std::to_string(e) + " out of range [0, " +
                                std::to_string(num_engines()) + ")");
}

int LoadBalancer::num_alive() const {
  return int(std::count_if(engines_.begin(), engines_.end(),
                           [](const EngineLoad& e) { return e.alive; }));
}

const EngineLoad& LoadBalancer::engine(int e) const {
  require_engine(e);
  return engines_[e];
}

double LoadBalancer::load(int e) const {
  require_engine(e);
  const EngineLoad& s = engines_[e];
  if (signal_ == LoadSignal::kCalls) return double(s.calls);
  // Llumnix freeness (higher = freer), negated so that lower means less loaded.
  // NOTE: divided by calls + 1 (not calls) so an idle engine compares by its headroom.
  return -double(int64_t(s.free_blocks) - s.queued_blocks) / double(s.calls + 1);
}

bool LoadBalancer::less_loaded(int a, int b) const {
  const EngineLoad &x = engines_[a], &y = engines_[b];
  const double la = load(a), lb = load(b);
  if (la != lb) return la < lb;
  const int64_t ha = int64_t(x.free_blocks) - x.queued_blocks;
  const int64_t hb = int64_t(y.free_blocks) - y.queued_blocks;
  if (ha != hb) return ha > hb;  // more KV headroom first
  if (x.calls != y.calls) return x.calls < y.calls;
  return a < b;
}

int LoadBalancer::least_loaded() const {
  int best = -1;
  for (int e = 0; e < num_engines(); ++e) {
    if (!engines_[e].alive) continue;
    if (best < 0 || less_loaded(e, best)) best = e;
  }
  if (best < 0) throw std::runtime_error("no live engine to route to");
  return best;
}

int LoadBalancer::next_round_robin() {
  for (int i = 0; i < num_engines(); ++i) {
    const int e = (rr_next_ + i) % num_engines();
    if (engines_[e].alive) {
      rr_next_ = (e + 1) % num_engines();
      return e;
    }
  }
  throw std::runtime_error("no live engine to route to");
}

int LoadBalancer::route(const std::string& call_id, const std::string& program_id,
                        int prompt_tokens) {
  if (call_id.empty()) throw std::invalid_argument("call id must not be empty");
  if (prompt_tokens < 0)
    throw std::invalid_argument("prompt_tokens must be >= 0, got " + std::to_string(prompt_tokens));
  if (calls_.count(call_id)) throw std::invalid_argument("call '" + call_id + "' is already routed");
  if (sticky_.size() >= next_collect_) {
    collect();
    next_collect_ = std::max<size_t>(64, 2 * sticky_.size());
  }
  int e = -1;
  if (policy_ == RoutePolicy::kRoundRobin) {
    e = next_round_robin();
  } else if (policy_ == RoutePolicy::kLeastLoaded || program_id.empty() ||
             prompt_tokens <= cfg_.short_call_tokens) {
    e = least_loaded();
  } else {
    auto it = sticky_.find(program_id);
    if (it != sticky_.end() && engines_[it->second].alive) {
      e = it->second;
    } else {
      e = least_loaded();
      sticky_[program_id] = e;
    }
  }
  Call c;
  c.engine = e;
  c.blocks = blocks_for(prompt_tokens, cfg_.block_size);
  calls_.emplace(call_id, c);
  EngineLoad& s = engines_[e];
  ++s.calls;
  ++s.queued;
  s.queued_blocks += c.blocks;
  ++s.routed;
  return e;
}

void LoadBalancer::started(const std::string& call_id) {
  auto it = calls_.find(call_id);
  if (it == calls_.end()) throw std::invalid_argument("unknown call '" + call_id + "'");
  Call& c = it->second;
  if (c.started) return;
  c.started = true;
  EngineLoad& s = engines_[c.engine];
  --s.queued;
  s.queued_blocks -= c.blocks;
}

void LoadBalancer::finished(const std::string& call_id) {
  auto it = calls_.find(call_id);
  if (it == calls_.end()) throw std::invalid_argument("unknown call '" + call_id + "'");
  started(call_id);
  --engines_[it->second.engine].calls;
  calls_.erase(it);
}

void LoadBalancer::report(int e, int free_blocks, int total_blocks) {
  require_engine(e);
  if (total_blocks < 0 || free_blocks < 0 || free_blocks > total_blocks)
    throw std::invalid_argument("report needs 0 <= free_blocks <= total_blocks, got " +
                                std::to_string(free_blocks) + " / " +
                                std::to_string(total_blocks));
  engines_[e].free_blocks = free_blocks;
  engines_[e].total_blocks = total_blocks;
}

std::vector<std::string> LoadBalancer::mark_dead(int e) {
  require_engine(e);
  engines_[e].alive = false;
  for (auto it = sticky_.begin(); it != sticky_.end();) {
    it = it->second == e ? sticky_.erase(it) : std::next(it);
  }
  std::vector<std::string> out;
  for (const auto& [id, c] : calls_)
    if (c.engine == e) out.push_back(id);
  std::sort(out.begin(), out.end());
  return out;
}

void LoadBalancer::forget_program(const std::string& program_id) { sticky_.erase(program_id); }

int LoadBalancer::collect() {
  if (!programs_) return 0;
  int n = 0;
  for (auto it = sticky_.begin(); it != sticky_.end();) {
    if (programs_->contains(it->first)) {
      ++it;
    } else {
      it = sticky_.erase(it);
      ++n;
    }
  }
  return n;
}

int LoadBalancer::engine_of(const std::string& call_id) const {
  auto it = calls_.find(call_id);
  return it == calls_.end() ? -1 : it->second.engine;
}

int LoadBalancer::sticky_engine(const std::string& program_id) const {
  auto it = sticky_.find(program_id);
  return it == sticky_.end() ? -1 : it->second;
}

void LoadBalancer::check() const {
  std::vector<int> calls(engines_.size(), 0), queued(engines_.size(), 0);
  std::vector<int64_t> blocks(engines_.size(), 0);
  for (const auto& [id, c] : calls_) {
    if (c.engine < 0 || c.engine >= num_engines())
      throw std::logic_error("call '" + id + "' on engine out of range");
    ++calls[c.engine];
    if (!c.started) {
      ++queued[c.engine];
      blocks[c.engine] += c.blocks;
    }
  }
  for (int e = 0; e < num_engines(); ++e) {
    const EngineLoad& s = engines_[e];
    const std::string at = " of engine " + std::to_string(e);
    if (s.calls != calls[e]) throw std::logic_error("call count" + at + " disagrees with calls");
    if (s.queued != queued[e]) throw std::logic_error("queued count" + at + " disagrees");
    if (s.queued_blocks != blocks[e]) throw std::logic_error("queued blocks" + at + " disagree");
    if (s.free_blocks < 0 || s.free_blocks > s.total_blocks)
      throw std::logic_error("free blocks" + at + " outside [0, total]");
    if (s.routed < s.calls) throw std::logic_error("fewer calls routed than in flight" + at);
  }
  for (const auto& [pid, e] : sticky_) {
    if (e < 0 || e >= num_engines() || !engines_[e].alive)
      throw std::logic_error("program '" + pid + "' sticks to a dead or unknown engine");
  }
}

void sync_program(ProgramTable& local, const std::string& program_id, double service,
                  double critical, double wait, double now) {
  if (program_id.empty()) throw std::invalid_argument("program id must not be empty");
  if (!(service >= 0.0) || !(critical >= 0.0) || !(wait >= 0.0))
    throw std::invalid_argument("sync_program needs service, critical and wait >= 0");
  // NOTE: touch counts no call, so the entry's active calls stay what the replica's own
  // scheduler recorded.
  ProgramEntry& e = local.touch(program_id, now);
  e.service = std::max(e.service, service);
  e.critical = std::max(e.critical, critical);
  e.wait = std::max(e.wait, wait);
}

}  // namespace pyserve
