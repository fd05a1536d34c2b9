// The host tier of the prefix cache and KV retention: offload on eviction, load on a hit,
// prefetch for waiting calls, and pins that keep a finished call's KV on the GPU.
#include <algorithm>
#include <limits>

#include "pyserve/scheduler.h"

namespace pyserve {

RetentionView Scheduler::view_of(const std::string& program_id, int context_tokens) const {
  return view_of(program_id.empty() ? nullptr : programs_->find(program_id), context_tokens);
}

RetentionView Scheduler::view_of(const ProgramEntry* program, int context_tokens) const {
  RetentionView v;
  v.now = now_;
  v.program = program;
  v.context_tokens = context_tokens;
  v.gpu_free_fraction = double(gpu_.num_free()) / double(gpu_.num_blocks());
  return v;
}

void Scheduler::on_gpu_evict(BlockId g, const CacheEntry& e) {
  // NOTE: runs inside gpu_.allocate() while the plan is built; the swap-out is ordered before
  // the step's swap-ins, copies and forward (docs/interfaces.md), so g may be rewritten safely.
  if (cpu_.num_blocks() == 0 || cpu_.holds(e.hash, e.uid)) return;
  const ProgramEntry* program = nullptr;
  bool ended = false;
  if (auto it = owner_keys_.find(e.owner); it != owner_keys_.end()) {
    ended = it->second.empty();
    if (!ended) program = programs_->find(it->second);
    if (!ended && program == nullptr)
      owner_keys_.erase(it);  // collected by the table's TTL: unknown from now on
  }
  RetentionView v = view_of(program, 0);
  v.ended = ended;
  if (!retention_->keep_on_host(v)) return;
  BlockId c = cpu_.allocate();  // may drop the least recently used host block
  if (c == kNoBlock) return;
  if (cpu_.adopt(c, e)) {
    plan_.swap_out.push_back(g);
    plan_.swap_out.push_back(c);
    ++counters_.blocks_offloaded;
  }
  cpu_.decref(c);  // cached and unreferenced: the host tier's MRU end
}

BlockId Scheduler::load_from_host(uint64_t h, uint64_t parent_uid, const TokenId* blk,
                                  uint64_t salt, uint64_t* uid) {
  if (cpu_.num_blocks() == 0) return kNoBlock;
  BlockId c = cpu_.match(h, parent_uid, blk, salt);
  if (c == kNoBlock || !ensure_free(1)) return kNoBlock;
  cpu_.incref(c);  // NOTE: before allocating: an offload must not take the block being read
  cpu_deferred_.push_back(c);
  BlockId g = gpu_.allocate();
  const CacheEntry e = cpu_.entry(c);
  gpu_.adopt(g, e);  // the GPU copy keeps the uid, so children verify on either tier
  plan_.swap_in.push_back(c);
  plan_.swap_in.push_back(g);
  *uid = e.uid;
  return g;
}

const std::vector<uint64_t>& Scheduler::chain_hashes(Request& r) {
  const int bs = cfg_.block_size;
  const int full = r.num_tokens() / bs;
  auto& hs = r.block_hashes;
  if (int(hs.size()) > full) hs.clear();
  for (int i = int(hs.size()); i < full; ++i)
    hs.push_back(gpu_.masked_hash(i ? hs[i - 1] : 0, &r.tokens[size_t(i) * bs], r.salt_hash));
  return hs;
}

void Scheduler::prefetch_waiting() {
  if (!retention_->prefetch() || cpu_.num_blocks() == 0) return;
  const int bs = cfg_.block_size;
  const int reserve = gpu_.num_blocks() / 8;
  int budget = cfg_.retention_prefetch_blocks, looked = 0;
  for (const auto& [key, id] : waiting_) {
    if (budget <= 0 || ++looked > 1) return;  // the head only: it is admitted next
    Request& r = req(id);
    if (!r.blocks.empty()) continue;
    const auto& hs = chain_hashes(r);
    uint64_t parent_uid = 0;
    for (size_t i = 0; i < hs.size() && budget > 0; ++i) {
      const TokenId* blk = &r.tokens[i * bs];
      BlockId g = gpu_.match(hs[i], parent_uid, blk, r.salt_hash);
      if (g != kNoBlock) {
        parent_uid = gpu_.uid(g);
        continue;
      }
      if (gpu_.num_free() <= reserve) return;
      uint64_t uid = 0;
      g = load_from_host(hs[i], parent_uid, blk, r.salt_hash, &uid);
      if (g == kNoBlock) break;
      deferred_decref_.push_back(g);  // cached on the GPU, held until the copy has run
      ++counters_.blocks_prefetched;
      --budget;
      parent_uid = uid;
    }
  }
}

void Scheduler::pin_finished(Request& r) {
  if (!r.tagged()) return;  // an untagged call is its own one-call program
  const RetentionView v = view_of(r.spec.program_id, r.num_tokens());
  const double seconds = retention_->pin_seconds(v);
  if (!(seconds > 0.0)) return;
  Pin pin;
  pin.expiry = now_ + seconds;
  pin.value = retention_->pin_value(v, pin.expiry);
  for (size_t i = 0; i < size_t(r.num_registered) && i < r.blocks.size(); ++i) {
    if (!gpu_.is_cached(r.blocks[i])) continue;
    gpu_.incref(r.blocks[i]);
    pin.blocks.push_back(r.blocks[i]);
  }
  // NOTE: one pin per program: a later call's finish replaces an earlier sibling's pin.
  release_pin(r.spec.program_id);
  if (!pin.blocks.empty()) pins_.emplace(r.spec.program_id, std::move(pin));
}

void Scheduler::release_pin(const std::string& key) {
  auto it = pins_.find(key);
  if (it == pins_.end()) return;
  const auto& blocks = it->second.blocks;
  for (auto b = blocks.rbegin(); b != blocks.rend(); ++b) gpu_.decref(*b);  // tail first (LRU)
  pins_.erase(it);
}

void Scheduler::end_program(const std::string& id) {
  release_pin(id);
  programs_->end(id);
  if (auto it = owner_keys_.find(hash_string(id)); it != owner_keys_.end()) it->second.clear();
}

void Scheduler::release_all_pins() {
  while (!pins_.empty()) release_pin(pins_.begin()->first);
}

void Scheduler::expire_pins() {
  std::vector<std::string> keys;
  for (const auto& [key, pin] : pins_)
    if (pin.expiry <= now_) keys.push_back(key);
  for (const auto& key : keys) release_pin(key);
}

bool Scheduler::ensure_free(int n) {
  while (gpu_.num_free() < n && !pins_.empty()) {
    auto worst = pins_.begin();
    for (auto it = pins_.begin(); it != pins_.end(); ++it)
      if (it->second.value < worst->second.value) worst = it;
    release_pin(worst->first);
  }
  return gpu_.num_free() >= n;
}

}  // namespace pyserve
