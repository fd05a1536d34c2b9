// CPU paged attention over the KV cache layout of docs/interfaces.md, and the KV write.
//
// NOTE: this header includes only <cstdint>: it is also compiled into the per-ISA translation
// units (attend_*.cc), which must not instantiate any shared inline/template code (see
// attend_impl.h).
#pragma once

#include <cstdint>

namespace pyserve::kernels {

enum class KvDtype : int32_t { kF32 = 0, kBF16 = 1 };  // kBF16: bfloat16 stored as uint16 bits

// One layer's attention problem. NOTE: every pointer is borrowed and C-contiguous:
//   q, out    [num_tokens, num_q_heads, head_dim]                 (dtype)
//   kv        [num_blocks, 2, block_size, num_kv_heads, head_dim] (dtype; index 0 = K, 1 = V)
//   qo_indptr [num_seqs + 1], kv_indptr [num_seqs + 1], seq_lens [num_seqs] (int32)
//   kv_indices [num_indices] (int32): sequence s owns kv_indices[kv_indptr[s] .. kv_indptr[s+1]).
// Query row i of sequence s (q_len rows ending at context length seq_len) is at position
// seq_len - q_len + i and sees cache positions 0 ..= that position.
struct PagedAttentionArgs {
  const void* q = nullptr;
  const void* kv = nullptr;
  void* out = nullptr;
  const int32_t* qo_indptr = nullptr;
  const int32_t* kv_indptr = nullptr;
  const int32_t* kv_indices = nullptr;
  const int32_t* seq_lens = nullptr;
  int64_t num_tokens = 0;
  int64_t num_seqs = 0;
  int64_t num_indices = 0;
  int64_t num_blocks = 0;
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 0;
  float scale = 1.0f;
  KvDtype dtype = KvDtype::kF32;
};

// Throws std::invalid_argument naming the first inconsistency (sizes, index ranges, causality).
void validate(const PagedAttentionArgs& a);

// Validates, then writes `out`. Runs on up to `num_threads` threads (the caller included);
// the dispatch picks the widest vector ISA the CPU supports (see set_isa). Thread-safe: a call
// that finds the thread pool busy runs on the calling thread alone.
void paged_attention(const PagedAttentionArgs& a, int num_threads);

// The new K/V rows of one step. NOTE: k, v [num_tokens, num_kv_heads, head_dim] (dtype),
// slot_mapping int64 [num_tokens]; kv as in PagedAttentionArgs.
struct WriteKvArgs {
  void* kv = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const int64_t* slot_mapping = nullptr;
  int64_t num_tokens = 0;
  int64_t num_blocks = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 0;
  KvDtype dtype = KvDtype::kF32;
};

// Copies row t of k/v to slot slot_mapping[t] (block slot / block_size, offset slot %
// block_size). Every slot is checked before anything is written; throws std::invalid_argument.
void write_kv(const WriteKvArgs& a);

// Vector ISA of the attention inner loop: "avx512", "avx2" or "generic".
const char* current_isa();
// Forces an ISA (tests, benchmarks). Throws std::invalid_argument if unknown or unsupported.
void set_isa(const char* name);

}  // namespace pyserve::kernels
