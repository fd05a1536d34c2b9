// Scheduler lifecycle: requests in and out, the step's phase order, stats and invariants.
#include "pyserve/scheduler.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace pyserve {

Scheduler::Scheduler(const SchedulerConfig& cfg, std::vector<TokenId> eos_token_ids,
                     std::shared_ptr<ProgramTable> programs)
    : cfg_((cfg.validate(), cfg)),
      eos_(std::move(eos_token_ids)),
      programs_(programs
                    ? std::move(programs)
                    : std::make_shared<ProgramTable>(cfg.program_ttl_s, size_t(cfg.max_programs))),
      policy_(make_policy(cfg)),
      retention_(make_retention(cfg)),
      gpu_(cfg.num_gpu_blocks, cfg.block_size, cfg.prefix_hash_mask),
      cpu_(cfg.num_cpu_blocks, cfg.block_size, cfg.prefix_hash_mask) {
  policy_->attach(*programs_);
  // NOTE: the hook runs inside gpu_.allocate(); `this` outlives gpu_ (a member).
  if (cfg_.enable_prefix_caching)
    gpu_.set_evict_hook([this](BlockId g, const CacheEntry& e) { on_gpu_evict(g, e); });
}

SeqId Scheduler::add_request(RequestSpec spec) {
  if (spec.request_id.empty()) throw std::invalid_argument("request_id must not be empty");
  if (ids_.count(spec.request_id))
    throw std::invalid_argument("duplicate request id '" + spec.request_id + "'");
  if (spec.prompt.empty())
    throw std::invalid_argument("request '" + spec.request_id + "' has an empty prompt");
  if (int(spec.prompt.size()) > cfg_.max_model_len)
    throw std::invalid_argument(
        "request '" + spec.request_id + "': prompt of " + std::to_string(spec.prompt.size()) +
        " tokens is longer than max_model_len " + std::to_string(cfg_.max_model_len));
  if (spec.max_tokens < 1) throw std::invalid_argument("max_tokens must be >= 1");
  if (spec.min_tokens < 0) throw std::invalid_argument("min_tokens must be >= 0");
  SeqId id;
  if (!free_slots_.empty()) {
    id = free_slots_.back();
    free_slots_.pop_back();
  } else {
    id = static_cast<SeqId>(slots_.size());
    slots_.emplace_back();
  }
  auto r = std::make_unique<Request>();
  r->id = id;
  r->num_prompt = static_cast<int>(spec.prompt.size());
  r->tokens = std::move(spec.prompt);  // NOTE: the prompt lives on in tokens only
  r->salt_hash = hash_string(spec.cache_salt);
  r->arrival_seq = arrivals_++;
  r->spec = std::move(spec);
  now_ = std::max(now_, r->spec.arrival_time);
  slots_[id] = std::move(r);
  Request& q = *slots_[id];
  ids_.emplace(q.spec.request_id, id);
  if (q.tagged()) {
    if (const ProgramEntry* before = programs_->find(q.spec.program_id))
      retention_->on_call_arrival(*before, now_);
    owner_keys_.insert_or_assign(hash_string(q.spec.program_id), q.spec.program_id);
    q.program = &programs_->call_arrived(q.spec.program_id, now_);
  } else {  // an untagged call is its own one-call program, kept out of the shared table
    q.solo.active_calls = 1;
    q.solo.last_arrival = q.solo.last_completion = now_;
    q.program = &q.solo;
  }
  policy_->on_arrival(q, now_);
  enqueue(waiting_, q);
  return id;
}

FinishedCall Scheduler::finish(const std::string& request_id, FinishReason reason) {
  if (reason == FinishReason::kNone) throw std::invalid_argument("finish needs a reason");
  auto it = ids_.find(request_id);
  if (it == ids_.end()) throw std::invalid_argument("unknown request id '" + request_id + "'");
  Request& r = req(it->second);
  if (r.status == Status::kWaiting) dequeue(waiting_, r);
  if (r.status == Status::kSwapped) dequeue(swapped_, r);
  if (r.status == Status::kRunning)
    running_.erase(std::find(running_.begin(), running_.end(), r.id));
  finish(r, reason);
  return finished_call(r);
}

Key Scheduler::make_key(const Request& r) const {
  return make_call_key(policy_->primary(r), r, cfg_.ltr_tie_break);
}

void Scheduler::enqueue(Queue& q, Request& r) {
  r.wait_since = now_;
  r.enqueue_step = plan_.step;
  r.key = make_key(r);
  q.emplace(r.key, r.id);
  r.status = (&q == &waiting_) ? Status::kWaiting : Status::kSwapped;
}

void Scheduler::dequeue(Queue& q, Request& r) { q.erase({r.key, r.id}); }

void Scheduler::leave_queue(Request& r) {
  const double waited = now_ - r.wait_since;
  r.total_wait += waited;
  r.call_wait += waited;
}

void Scheduler::refresh_queued() {
  sort_buf_.clear();
  for (Queue* q : {&waiting_, &swapped_}) {
    for (const auto& [key, id] : *q) {
      if (policy_->refresh(req(id), now_, plan_.step)) sort_buf_.emplace_back(key, id);
    }
    for (const auto& [key, id] : sort_buf_) {
      if (!q->erase({key, id})) continue;
      Request& r = req(id);
      r.key = make_key(r);
      q->emplace(r.key, id);
    }
    sort_buf_.clear();
  }
}

const StepPlan& Scheduler::schedule() {
  for (SeqId id : pending_release_) {
    slots_[id].reset();
    free_slots_.push_back(id);
  }
  pending_release_.clear();
  plan_.clear();
  plan_.step = counters_.num_steps++;
  decodes_.clear();
  prefills_.clear();
  budget_ = cfg_.max_num_batched_tokens;
  preempted_this_step_ = false;
  if (policy_->needs_refresh()) refresh_queued();
  if (!pins_.empty()) expire_pins();
  if (now_ >= next_collect_) {  // TTL collection of idle programs, a few times per TTL
    programs_->collect(now_);
    next_collect_ = now_ + programs_->ttl() / 8;
  }

  // Best-first order of the running set (keys may change as service accrues).
  sort_buf_.clear();
  for (SeqId id : running_) sort_buf_.emplace_back(make_key(req(id)), id);
  if (!std::is_sorted(sort_buf_.begin(), sort_buf_.end())) {  // usually sorted already
    std::sort(sort_buf_.begin(), sort_buf_.end());
    for (size_t i = 0; i < sort_buf_.size(); ++i) running_[i] = sort_buf_[i].second;
  }

  proactive_preemption();  // priority preemption when the batch is full (bounded)
  schedule_running();      // decodes first, then continuing prefill chunks
  schedule_admissions();   // swapped-in and new requests, best key first
  build_plan();
  return plan_;
}

const Request& Scheduler::request(SeqId id) const {
  if (id < 0 || id >= SeqId(slots_.size()) || !slots_[id])
    throw std::invalid_argument("unknown sequence id " + std::to_string(id));
  return *slots_[id];
}

SeqId Scheduler::find(const std::string& request_id) const {
  auto it = ids_.find(request_id);
  return it == ids_.end() ? -1 : it->second;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s = counters_;
  s.num_running = int(running_.size());
  s.num_waiting = int(waiting_.size());
  s.num_swapped = int(swapped_.size());
  s.gpu_blocks_free = gpu_.num_free();
  s.gpu_blocks_total = gpu_.num_blocks();
  s.gpu_blocks_cached = gpu_.num_cached();
  s.cpu_blocks_free = cpu_.num_free();
  s.cpu_blocks_total = cpu_.num_blocks();
  s.cpu_blocks_cached = cpu_.num_cached();
  for (const auto& [key, pin] : pins_) s.gpu_blocks_pinned += int(pin.blocks.size());
  return s;
}

}  // namespace pyserve
