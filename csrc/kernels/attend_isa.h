// Per-ISA entry points of the attention inner loop (attend_impl.h compiled once per ISA).
#pragma once

#include <cstdint>

#include "paged_attention.h"

namespace pyserve::kernels {

// One unit of parallel work: query rows [row_begin, row_end) of sequence `seq` for the query
// heads that share kv heads [kv_head, kv_head_end).
struct AttendItem {
  int32_t seq;
  int32_t kv_head;
  int32_t kv_head_end;
  int32_t row_begin;
  int32_t row_end;
};

// Floats of scratch one item of `rows` query rows over `heads` kv heads needs. NOTE: static
// (internal linkage), so no per-ISA copy can stand in for another TU's.
static inline int64_t attend_scratch_floats(const PagedAttentionArgs& a, int32_t rows,
                                            int32_t heads) {
  const int64_t m = int64_t(rows) * (a.num_q_heads / a.num_kv_heads) * heads;
  return 2 * m * a.head_dim + 2 * m + a.block_size + 2 * int64_t(a.block_size) * a.head_dim;
}

using AttendFn = void (*)(const PagedAttentionArgs&, const AttendItem&, float* scratch);

#define PYSERVE_DECLARE_ISA(ns)                                                        \
  namespace ns {                                                                       \
  void attend_f32(const PagedAttentionArgs& a, const AttendItem& it, float* scratch);  \
  void attend_bf16(const PagedAttentionArgs& a, const AttendItem& it, float* scratch); \
  }
PYSERVE_DECLARE_ISA(isa_generic)
PYSERVE_DECLARE_ISA(isa_avx2)
PYSERVE_DECLARE_ISA(isa_avx512)
#undef PYSERVE_DECLARE_ISA

}  // namespace pyserve::kernels
