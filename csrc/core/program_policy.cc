// ProgramPolicy: the native Scheduler's policy and program-table bookkeeping (scheduler.cc,
// update.cc, schedule_admit.cc) for a host that owns the KV cache. Same order of hooks, same
// clock rule, same pro-rata service charge.
#include "pyserve/program_policy.h"

#include <algorithm>
#include <stdexcept>

namespace pyserve {

ProgramPolicy::ProgramPolicy(const SchedulerConfig& cfg, std::shared_ptr<ProgramTable> programs)
    : cfg_((cfg.validate(), cfg)),
      programs_(programs
                    ? std::move(programs)
                    : std::make_shared<ProgramTable>(cfg.program_ttl_s, size_t(cfg.max_programs))),
      policy_(make_policy(cfg)) {}

const Request& ProgramPolicy::get(const std::string& id) const {
  auto it = calls_.find(id);
  if (it == calls_.end()) throw std::invalid_argument("unknown request id '" + id + "'");
  return *it->second;
}

void ProgramPolicy::arrive(RequestSpec spec) {
  if (spec.request_id.empty()) throw std::invalid_argument("request_id must not be empty");
  if (calls_.count(spec.request_id))
    throw std::invalid_argument("duplicate request id '" + spec.request_id + "'");
  auto owned = std::make_unique<Request>();
  Request& r = *owned;
  r.arrival_seq = arrivals_++;
  r.spec = std::move(spec);
  now_ = std::max(now_, r.spec.arrival_time);
  // As Scheduler::add_request: an untagged call is its own one-call program, kept out of the
  // shared table.
  if (r.tagged()) {
    r.program = &programs_->call_arrived(r.spec.program_id, now_);
  } else {
    r.solo.active_calls = 1;
    r.solo.last_arrival = r.solo.last_completion = now_;
    r.program = &r.solo;
  }
  policy_->on_arrival(r, now_);
  r.status = Status::kWaiting;
  r.wait_since = now_;
  calls_.emplace(r.spec.request_id, std::move(owned));
}

void ProgramPolicy::leave_queue(Request& r) {
  const double waited = now_ - r.wait_since;
  r.total_wait += waited;
  r.call_wait += waited;
}

void ProgramPolicy::started(const std::string& request_id) {
  Request& r = get(request_id);
  if (r.status != Status::kWaiting) return;  // already running: nothing to account
  leave_queue(r);
  r.status = Status::kRunning;
}

void ProgramPolicy::preempted(const std::string& request_id) {
  Request& r = get(request_id);
  if (r.status != Status::kRunning) return;
  ++r.num_preemptions;
  r.status = Status::kWaiting;
  r.wait_since = now_;
}

std::vector<std::string> ProgramPolicy::begin_step() {
  ++step_;
  std::vector<std::pair<Key, std::string>> changed;
  if (policy_->needs_refresh()) {
    for (auto& [id, r] : calls_) {
      if (r->status == Status::kWaiting && policy_->refresh(*r, now_, step_)) {
        changed.emplace_back(make_call_key(policy_->primary(*r), *r, cfg_.ltr_tie_break), id);
      }
    }
  }
  if (now_ >= next_collect_) {  // as Scheduler::schedule: a few collections per TTL
    programs_->collect(now_);
    next_collect_ = now_ + programs_->ttl() / 8;
  }
  std::sort(changed.begin(), changed.end());
  std::vector<std::string> out;
  for (auto& [key, id] : changed) out.push_back(std::move(id));
  return out;
}

std::vector<std::string> ProgramPolicy::charge(const std::vector<std::pair<std::string, int>>& ran,
                                               double step_seconds) {
  if (!(step_seconds >= 0.0)) throw std::invalid_argument("step_seconds must be >= 0");
  int64_t total = 0;
  for (const auto& [id, n] : ran) {
    if (n < 0) throw std::invalid_argument("negative token count for request '" + id + "'");
    total += n;
  }
  now_ += step_seconds;
  const double per_token = total > 0 ? step_seconds / double(total) : 0.0;
  std::vector<std::string> changed;
  for (const auto& [id, n] : ran) {
    auto it = calls_.find(id);
    if (it == calls_.end()) continue;  // finished or aborted while the step ran
    Request& r = *it->second;
    const double before = policy_->primary(r);
    r.service += per_token * n;
    policy_->on_service(r, per_token * n);
    if (policy_->primary(r) != before) changed.push_back(id);
  }
  return changed;
}

void ProgramPolicy::finish(const std::string& request_id) {
  auto it = calls_.find(request_id);
  if (it == calls_.end()) throw std::invalid_argument("unknown request id '" + request_id + "'");
  Request& r = *it->second;
  if (r.status == Status::kWaiting) leave_queue(r);
  r.status = Status::kFinished;
  policy_->on_finish(r, now_);
  // As Scheduler::finish: aborts fold in too, by entry (an ended program's retired entry takes
  // its own calls' service).
  if (r.tagged()) {
    programs_->call_finished(*r.program, r.service, r.total_wait, now_);
  } else {
    programs_->solo_finished(r.solo, r.service, r.total_wait, now_);
  }
  r.program = nullptr;
  calls_.erase(it);
}

}  // namespace pyserve
