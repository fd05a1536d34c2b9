// The attention inner loop, compiled once per vector ISA: attend_generic.cc (baseline x86-64 /
// any CPU), attend_avx2.cc (-mavx2 -mfma), attend_avx512.cc (-mavx512f ...). Each includes this
// file with PYSERVE_ISA_NS set to its own namespace.
//
// NOTE: no standard-library templates or other shared inline functions may be used here: the
// linker keeps one copy of an inline function across translation units, and a copy compiled
// with AVX2 would then run on CPUs without it. All helpers live in an anonymous namespace.
//
// Algorithm (flash-style online softmax, fp32 accumulation): one item owns the query rows of
// one (sequence, kv head, row tile); the G = Hq / Hkv query heads sharing the kv head are
// processed together so every K/V block is read once per item. For each cache block, the
// scores of each query vector against the block's visible keys are computed, the running max
// and sum are rescaled, and the V rows are accumulated; nothing of size seq_len is stored.
#ifndef PYSERVE_ISA_NS
#error "define PYSERVE_ISA_NS before including attend_impl.h"
#endif

#include <cstdint>

#include "attend_isa.h"

namespace pyserve::kernels::PYSERVE_ISA_NS {
namespace {

// exp(x) for x <= 0 to ~2e-7 relative: 2^n * e^r with |r| <= ln2/2 and a degree-6 Taylor
// polynomial. Branch-free so the loops calling it vectorise. NOTE: inputs below -87 return
// ~1e-38 (not 0); -inf is clamped the same way.
inline float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504f + kMagic;
  const float n = t - kMagic;
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float bf16_to_f32(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float load(float x) { return x; }
inline float load(uint16_t x) { return bf16_to_f32(x); }
inline void store(float* dst, float x) { *dst = x; }
inline void store(uint16_t* dst, float x) { *dst = f32_to_bf16(x); }

inline int32_t min_i32(int32_t a, int32_t b) { return a < b ? a : b; }

inline float dot(const float* a, const float* b, int32_t d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int32_t i = 0; i < d; ++i) s += a[i] * b[i];
  return s;
}

// Scratch views of one item (layout matches attend_scratch_floats).
struct State {
  float* q;       // [m, d] scaled queries
  float* acc;     // [m, d] unnormalised output
  float* mx;      // [m] running max
  float* sum;     // [m] running softmax denominator
  float* scores;  // [block_size]
  float* kf;      // [block_size, d] bf16 K converted to fp32
  float* vf;      // [block_size, d]
};

// Folds keys [0, nv) of one block (rows `ks` floats apart) into query vector i.
inline void fold_block(State& s, int32_t i, int32_t d, const float* k, const float* v, int64_t ks,
                       int32_t nv) {
  const float* qi = s.q + int64_t(i) * d;
  float bmax = -__builtin_inff();
  for (int32_t j = 0; j < nv; ++j) {
    const float x = dot(qi, k + j * ks, d);
    s.scores[j] = x;
    bmax = x > bmax ? x : bmax;
  }
  const float m_new = s.mx[i] > bmax ? s.mx[i] : bmax;
  const float corr = exp_neg(s.mx[i] - m_new);
  float total = s.sum[i] * corr;
#pragma omp simd reduction(+ : total)
  for (int32_t j = 0; j < nv; ++j) {
    const float p = exp_neg(s.scores[j] - m_new);
    s.scores[j] = p;
    total += p;
  }
  float* ai = s.acc + int64_t(i) * d;
#pragma omp simd
  for (int32_t c = 0; c < d; ++c) ai[c] *= corr;
  for (int32_t j = 0; j < nv; ++j) {
    const float p = s.scores[j];
    const float* vj = v + j * ks;
#pragma omp simd
    for (int32_t c = 0; c < d; ++c) ai[c] += p * vj[c];
  }
  s.mx[i] = m_new;
  s.sum[i] = total;
}

// Rows [0, n) of one head of a cache block as fp32 rows `ks` floats apart: the cache itself
// for fp32, a converted copy for bf16.
inline const float* rows_f32(const float* src, float*, int32_t, int32_t, int64_t) { return src; }
inline const float* rows_f32(const uint16_t* src, float* dst, int32_t n, int32_t d,
                             int64_t stride) {
  for (int32_t j = 0; j < n; ++j) {
#pragma omp simd
    for (int32_t c = 0; c < d; ++c) dst[int64_t(j) * d + c] = bf16_to_f32(src[j * stride + c]);
  }
  return dst;
}

// Asks for the K and V rows of one head of a cache block ahead of use: blocks are scattered,
// so the hardware prefetcher cannot guess the next one.
template <typename T>
inline void prefetch_block(const T* k, int32_t n, int32_t d, int64_t stride, int64_t v_offset) {
  const int64_t bytes = int64_t(d) * int64_t(sizeof(T));
  for (int32_t j = 0; j < n; ++j)
    for (int64_t off = 0; off < bytes; off += 64) {
      __builtin_prefetch(reinterpret_cast<const char*>(k + j * stride) + off);
      __builtin_prefetch(reinterpret_cast<const char*>(k + v_offset + j * stride) + off);
    }
}

// kD > 0: the head dim as a compile-time constant (fully unrolled inner loops); 0: runtime.
// The item's kv heads [kv_head, kv_head_end) are walked inside the block loop, so a decode
// item that owns every head reads each cache block front to back, once.
template <typename T, int32_t kD>
void attend(const PagedAttentionArgs& a, const AttendItem& it, float* scratch) {
  const int32_t d = kD > 0 ? kD : a.head_dim;
  const int32_t bs = a.block_size, hq = a.num_q_heads, hkv = a.num_kv_heads;
  const int32_t g = hq / hkv;
  const int32_t nh = it.kv_head_end - it.kv_head;
  const int32_t m = (it.row_end - it.row_begin) * g;  // query vectors per kv head
  const int32_t mt = m * nh;                          // query vectors of the item
  State s{scratch,
          scratch + int64_t(mt) * d,
          scratch + 2 * int64_t(mt) * d,
          scratch + 2 * int64_t(mt) * d + mt,
          scratch + 2 * int64_t(mt) * d + 2 * mt,
          nullptr,
          nullptr};
  s.kf = s.scores + bs;
  s.vf = s.kf + int64_t(bs) * d;

  const int64_t q0 = a.qo_indptr[it.seq];
  const int32_t q_len = int32_t(a.qo_indptr[it.seq + 1] - q0);
  const int32_t seq_len = a.seq_lens[it.seq];
  const int32_t first_pos = seq_len - q_len;
  const T* q = static_cast<const T*>(a.q);
  // NOTE: query vector index: (head - kv_head) * m + i, i = row offset * g + head-in-group.
  for (int32_t x = 0; x < mt; ++x) {
    const int32_t h = it.kv_head + x / m, i = x % m;
    const int64_t row = q0 + it.row_begin + i / g;
    const T* src = q + (row * hq + int64_t(h) * g + i % g) * d;
    float* dst = s.q + int64_t(x) * d;
#pragma omp simd
    for (int32_t c = 0; c < d; ++c) dst[c] = load(src[c]) * a.scale;
#pragma omp simd
    for (int32_t c = 0; c < d; ++c) s.acc[int64_t(x) * d + c] = 0.0f;
    s.mx[x] = -__builtin_inff();
    s.sum[x] = 0.0f;
  }

  const int64_t tok_stride = int64_t(hkv) * d;
  const int32_t* blocks = a.kv_indices + a.kv_indptr[it.seq];
  const int32_t last_pos = first_pos + it.row_end - 1;
  const T* kv = static_cast<const T*>(a.kv);
  for (int32_t b = 0; b <= last_pos / bs; ++b) {
    const int32_t t0 = b * bs;
    const int32_t n = min_i32(bs, seq_len - t0);
    const T* block = kv + int64_t(blocks[b]) * 2 * bs * tok_stride;
    if (b < last_pos / bs) {
      const T* next = kv + int64_t(blocks[b + 1]) * 2 * bs * tok_stride + int64_t(it.kv_head) * d;
      prefetch_block(next, min_i32(bs, seq_len - t0 - bs), d * nh, tok_stride, bs * tok_stride);
    }
    for (int32_t h = it.kv_head; h < it.kv_head_end; ++h) {
      const T* kb = block + int64_t(h) * d;
      const float* k = rows_f32(kb, s.kf, n, d, tok_stride);
      const float* v = rows_f32(kb + bs * tok_stride, s.vf, n, d, tok_stride);
      const int64_t ks = sizeof(T) == sizeof(float) ? tok_stride : d;  // see rows_f32
      const int32_t base = (h - it.kv_head) * m;
      for (int32_t i = 0; i < m; ++i) {
        const int32_t nv = min_i32(n, first_pos + it.row_begin + i / g + 1 - t0);
        if (nv > 0) fold_block(s, base + i, d, k, v, ks, nv);
      }
    }
  }

  T* out = static_cast<T*>(a.out);
  for (int32_t x = 0; x < mt; ++x) {
    const int32_t h = it.kv_head + x / m, i = x % m;
    const int64_t row = q0 + it.row_begin + i / g;
    T* dst = out + (row * hq + int64_t(h) * g + i % g) * d;
    const float inv = 1.0f / s.sum[x];
    for (int32_t c = 0; c < d; ++c) store(dst + c, s.acc[int64_t(x) * d + c] * inv);
  }
}

template <typename T>
void attend_any(const PagedAttentionArgs& a, const AttendItem& it, float* scratch) {
  switch (a.head_dim) {
    case 32:
      return attend<T, 32>(a, it, scratch);
    case 64:
      return attend<T, 64>(a, it, scratch);
    case 128:
      return attend<T, 128>(a, it, scratch);
    default:
      return attend<T, 0>(a, it, scratch);
  }
}

}  // namespace

void attend_f32(const PagedAttentionArgs& a, const AttendItem& it, float* scratch) {
  attend_any<float>(a, it, scratch);
}

void attend_bf16(const PagedAttentionArgs& a, const AttendItem& it, float* scratch) {
  attend_any<uint16_t>(a, it, scratch);
}

}  // namespace pyserve::kernels::PYSERVE_ISA_NS
