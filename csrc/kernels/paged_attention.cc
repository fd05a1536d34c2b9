// Validation, work split, ISA dispatch and the KV write of the CPU paged attention.
#include "paged_attention.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "attend_isa.h"
#include "thread_pool.h"

namespace pyserve::kernels {

namespace {

// Query rows per work item of a prefill chunk: enough items to spread one long prefill over
// the threads, few enough that each K/V block is reused by many queries.
constexpr int32_t kTileRows = 16;
// Sequences with at most this many query rows (decodes) are one item over every kv head.
constexpr int32_t kWholeSeqRows = 4;
// Below this many multiply-adds a call runs on the calling thread (waking workers costs more).
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

bool cpu_has(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case Isa::kGeneric:
      return true;
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return false;
#else
  return isa == Isa::kGeneric;  // the other variants are compiled without ISA flags here
#endif
}

Isa best_isa() {
  if (cpu_has(Isa::kAvx512)) return Isa::kAvx512;
  if (cpu_has(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kGeneric;
}

std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{int(best_isa())};
  return slot;
}

AttendFn attend_fn(KvDtype dtype) {
  const bool bf16 = dtype == KvDtype::kBF16;
  switch (Isa(isa_slot().load())) {
    case Isa::kAvx512:
      return bf16 ? isa_avx512::attend_bf16 : isa_avx512::attend_f32;
    case Isa::kAvx2:
      return bf16 ? isa_avx2::attend_bf16 : isa_avx2::attend_f32;
    case Isa::kGeneric:
      break;
  }
  return bf16 ? isa_generic::attend_bf16 : isa_generic::attend_f32;
}

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument("paged_attention: " + what);
}

void validate_shape(const PagedAttentionArgs& a) {
  if (a.num_q_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 || a.block_size <= 0)
    fail("num_q_heads, num_kv_heads, head_dim and block_size must be positive");
  if (a.num_q_heads % a.num_kv_heads != 0)
    fail("num_q_heads (" + std::to_string(a.num_q_heads) +
         ") must be a multiple of num_kv_heads (" + std::to_string(a.num_kv_heads) + ")");
  if (a.num_tokens < 0 || a.num_seqs < 0 || a.num_indices < 0 || a.num_blocks < 0)
    fail("sizes must be >= 0");
  if (a.dtype != KvDtype::kF32 && a.dtype != KvDtype::kBF16) fail("unknown dtype");
  if (!a.qo_indptr || !a.kv_indptr || (a.num_seqs > 0 && !a.seq_lens)) fail("missing index array");
  if (a.num_tokens > 0 && (!a.q || !a.out || !a.kv)) fail("missing q, out or kv buffer");
}

void validate_seq(const PagedAttentionArgs& a, int64_t s) {
  const std::string name = "sequence " + std::to_string(s) + ": ";
  const int64_t q_len = int64_t(a.qo_indptr[s + 1]) - a.qo_indptr[s];
  const int64_t seq_len = a.seq_lens[s];
  if (q_len < 1 || q_len > seq_len)
    fail(name + std::to_string(q_len) + " query tokens for context length " +
         std::to_string(seq_len));
  const int64_t lo = a.kv_indptr[s], hi = a.kv_indptr[s + 1];
  if (lo < 0 || hi < lo || hi > a.num_indices) fail(name + "kv_indptr out of range");
  const int64_t need = (seq_len + a.block_size - 1) / a.block_size;
  if (hi - lo < need)
    fail(name + "context length " + std::to_string(seq_len) + " needs " + std::to_string(need) +
         " blocks, the block table has " + std::to_string(hi - lo));
  for (int64_t i = lo; i < lo + need; ++i)
    if (a.kv_indices[i] < 0 || a.kv_indices[i] >= a.num_blocks)
      fail(name + "block id " + std::to_string(a.kv_indices[i]) + " out of range [0, " +
           std::to_string(a.num_blocks) + ")");
}

std::vector<AttendItem> make_items(const PagedAttentionArgs& a, int64_t* work) {
  std::vector<AttendItem> items;
  *work = 0;
  // NOTE: last sequence first: prefill chunks come after the decodes in a step and are the
  // largest items, so the dynamic schedule starts them early.
  for (int64_t s = a.num_seqs - 1; s >= 0; --s) {
    const int32_t q_len = a.qo_indptr[s + 1] - a.qo_indptr[s];
    *work += int64_t(q_len) * a.seq_lens[s] * a.num_q_heads * a.head_dim;
    if (q_len <= kWholeSeqRows) {  // a decode: one item reads each block once, all heads
      items.push_back({int32_t(s), 0, a.num_kv_heads, 0, q_len});
      continue;
    }
    for (int32_t r = 0; r < q_len; r += kTileRows) {
      const int32_t end = r + kTileRows < q_len ? r + kTileRows : q_len;
      for (int32_t h = 0; h < a.num_kv_heads; ++h) items.push_back({int32_t(s), h, h + 1, r, end});
    }
  }
  return items;
}

}  // namespace

void validate(const PagedAttentionArgs& a) {
  validate_shape(a);
  if (a.qo_indptr[0] != 0) fail("qo_indptr[0] must be 0");
  for (int64_t s = 0; s < a.num_seqs; ++s)
    if (a.qo_indptr[s + 1] < a.qo_indptr[s]) fail("qo_indptr must be non-decreasing");
  if (a.qo_indptr[a.num_seqs] != a.num_tokens)
    fail("qo_indptr[-1] = " + std::to_string(a.qo_indptr[a.num_seqs]) + " but q has " +
         std::to_string(a.num_tokens) + " rows");
  if (a.num_indices > 0 && !a.kv_indices) fail("missing kv_indices");
  for (int64_t s = 0; s < a.num_seqs; ++s) validate_seq(a, s);
}

void paged_attention(const PagedAttentionArgs& a, int num_threads) {
  validate(a);
  int64_t work = 0;
  const std::vector<AttendItem> items = make_items(a, &work);
  if (items.empty()) return;
  const AttendFn fn = attend_fn(a.dtype);
  const int64_t scratch = std::max(attend_scratch_floats(a, kTileRows, 1),
                                   attend_scratch_floats(a, kWholeSeqRows, a.num_kv_heads));
  auto body = [&](int64_t i) {
    // NOTE: per-thread scratch, grown on demand and kept for later calls.
    thread_local std::vector<float> buf;
    if (int64_t(buf.size()) < scratch) buf.resize(size_t(scratch));
    fn(a, items[size_t(i)], buf.data());
  };
  const int threads = work < kMinParallelWork ? 1 : num_threads;
  ThreadPool::instance().run(int64_t(items.size()), threads, body);
}

void write_kv(const WriteKvArgs& a) {
  if (a.num_kv_heads <= 0 || a.head_dim <= 0 || a.block_size <= 0 || a.num_blocks < 0 ||
      a.num_tokens < 0)
    throw std::invalid_argument("write_kv: sizes must be positive");
  if (a.num_tokens == 0) return;
  if (!a.kv || !a.k || !a.v || !a.slot_mapping)
    throw std::invalid_argument("write_kv: missing buffer");
  const int64_t slots = a.num_blocks * a.block_size;
  for (int64_t t = 0; t < a.num_tokens; ++t)
    if (a.slot_mapping[t] < 0 || a.slot_mapping[t] >= slots)
      throw std::invalid_argument("write_kv: slot " + std::to_string(a.slot_mapping[t]) +
                                  " out of range [0, " + std::to_string(slots) + ")");
  const int64_t elem = a.dtype == KvDtype::kBF16 ? 2 : 4;
  const int64_t row = int64_t(a.num_kv_heads) * a.head_dim * elem;  // bytes of one token
  auto* kv = static_cast<char*>(a.kv);
  const auto* k = static_cast<const char*>(a.k);
  const auto* v = static_cast<const char*>(a.v);
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    const int64_t block = a.slot_mapping[t] / a.block_size;
    const int64_t offset = a.slot_mapping[t] % a.block_size;
    char* kdst = kv + ((block * 2) * a.block_size + offset) * row;
    std::memcpy(kdst, k + t * row, size_t(row));
    std::memcpy(kdst + a.block_size * row, v + t * row, size_t(row));
  }
}

const char* current_isa() {
  switch (Isa(isa_slot().load())) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kGeneric:
      break;
  }
  return "generic";
}

void set_isa(const char* name) {
  const std::string n = name ? name : "";
  Isa isa;
  if (n == "generic")
    isa = Isa::kGeneric;
  else if (n == "avx2")
    isa = Isa::kAvx2;
  else if (n == "avx512")
    isa = Isa::kAvx512;
  else if (n == "auto")
    isa = best_isa();
  else
    throw std::invalid_argument("unknown ISA '" + n + "'; expected auto, generic, avx2, avx512");
  if (!cpu_has(isa)) throw std::invalid_argument("this CPU does not support " + n);
  isa_slot().store(int(isa));
}

}  // namespace pyserve::kernels
