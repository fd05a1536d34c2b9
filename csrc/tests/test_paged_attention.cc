// CPU paged attention (csrc/kernels) against a naive double-precision reference on random block
// tables, for every ISA the CPU supports, fp32 and bf16, GQA ratios, block sizes and head dims;
// bad inputs throw std::invalid_argument. Runs under ASan/UBSan in CI.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "paged_attention.h"

using namespace pyserve::kernels;

namespace {

int g_failures = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK(%s)\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                          \
    }                                                                        \
  } while (0)

float bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t bf16_bits(float f) {
  uint32_t u;
  f = bf16_round(f);
  std::memcpy(&u, &f, 4);
  return uint16_t(u >> 16);
}

float from_bits(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Problem {
  int hq, hkv, d, bs, num_blocks;
  std::vector<int32_t> qo_indptr{0}, kv_indptr{0}, kv_indices, seq_lens;
  std::vector<float> q, kv;  // already rounded to bf16 when testing bf16
};

Problem make_problem(std::mt19937& rng, int hq, int hkv, int d, int bs, bool bf16) {
  Problem p{hq, hkv, d, bs, 0, {0}, {0}, {}, {}, {}, {}};
  std::uniform_int_distribution<int> nseq(1, 5), prefix(0, 40), chunk(2, 37), coin(0, 2);
  const int s = nseq(rng);
  std::vector<int> blocks_per_seq;
  for (int i = 0; i < s; ++i) {
    const int q_len = coin(rng) == 0 ? chunk(rng) : 1;  // decodes and (chunked) prefills
    const int seq_len = q_len + prefix(rng);
    p.qo_indptr.push_back(p.qo_indptr.back() + q_len);
    p.seq_lens.push_back(seq_len);
    blocks_per_seq.push_back((seq_len + bs - 1) / bs);
  }
  p.num_blocks = std::accumulate(blocks_per_seq.begin(), blocks_per_seq.end(), 0) + 3;
  std::vector<int32_t> ids(p.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  int next = 0;
  for (int i = 0; i < s; ++i) {
    for (int b = 0; b < blocks_per_seq[i]; ++b) p.kv_indices.push_back(ids[next++]);
    p.kv_indptr.push_back(int32_t(p.kv_indices.size()));
  }
  std::normal_distribution<float> normal(0.0f, 1.0f);
  p.q.resize(size_t(p.qo_indptr.back()) * hq * d);
  p.kv.resize(size_t(p.num_blocks) * 2 * bs * hkv * d);
  for (float& x : p.q) x = bf16 ? bf16_round(normal(rng)) : normal(rng);
  for (float& x : p.kv) x = bf16 ? bf16_round(normal(rng)) : normal(rng);
  return p;
}

std::vector<double> reference(const Problem& p, float scale) {
  std::vector<double> out(p.q.size());
  const int g = p.hq / p.hkv;
  for (size_t s = 0; s + 1 < p.qo_indptr.size(); ++s) {
    const int q_len = p.qo_indptr[s + 1] - p.qo_indptr[s];
    for (int r = 0; r < q_len; ++r) {
      const int pos = p.seq_lens[s] - q_len + r;
      for (int h = 0; h < p.hq; ++h) {
        const float* qv = &p.q[(size_t(p.qo_indptr[s] + r) * p.hq + h) * p.d];
        auto at = [&](int t, int which) {
          const int blk = p.kv_indices[p.kv_indptr[s] + t / p.bs];
          return &p.kv[((size_t(blk) * 2 + which) * p.bs + t % p.bs) * p.hkv * p.d +
                       size_t(h / g) * p.d];
        };
        std::vector<double> w(pos + 1);
        double mx = -1e300, total = 0;
        for (int t = 0; t <= pos; ++t) {
          double x = 0;
          for (int c = 0; c < p.d; ++c) x += double(qv[c]) * at(t, 0)[c];
          w[t] = x * scale;
          mx = std::max(mx, w[t]);
        }
        for (double& x : w) total += (x = std::exp(x - mx));
        double* o = &out[(size_t(p.qo_indptr[s] + r) * p.hq + h) * p.d];
        for (int t = 0; t <= pos; ++t)
          for (int c = 0; c < p.d; ++c) o[c] += w[t] / total * at(t, 1)[c];
      }
    }
  }
  return out;
}

PagedAttentionArgs args_for(const Problem& p, const void* q, const void* kv, void* out,
                            KvDtype dtype) {
  PagedAttentionArgs a;
  a.q = q;
  a.kv = kv;
  a.out = out;
  a.qo_indptr = p.qo_indptr.data();
  a.kv_indptr = p.kv_indptr.data();
  a.kv_indices = p.kv_indices.data();
  a.seq_lens = p.seq_lens.data();
  a.num_tokens = p.qo_indptr.back();
  a.num_seqs = int64_t(p.seq_lens.size());
  a.num_indices = int64_t(p.kv_indices.size());
  a.num_blocks = p.num_blocks;
  a.num_q_heads = p.hq;
  a.num_kv_heads = p.hkv;
  a.head_dim = p.d;
  a.block_size = p.bs;
  a.scale = 1.0f / std::sqrt(float(p.d));
  a.dtype = dtype;
  return a;
}

double run_case(std::mt19937& rng, int hq, int hkv, int d, int bs, bool bf16, int threads) {
  const Problem p = make_problem(rng, hq, hkv, d, bs, bf16);
  const float scale = 1.0f / std::sqrt(float(d));
  const std::vector<double> ref = reference(p, scale);
  std::vector<float> out(p.q.size());
  if (!bf16) {
    paged_attention(args_for(p, p.q.data(), p.kv.data(), out.data(), KvDtype::kF32), threads);
  } else {
    std::vector<uint16_t> q(p.q.size()), kv(p.kv.size()), o(p.q.size());
    for (size_t i = 0; i < q.size(); ++i) q[i] = bf16_bits(p.q[i]);
    for (size_t i = 0; i < kv.size(); ++i) kv[i] = bf16_bits(p.kv[i]);
    paged_attention(args_for(p, q.data(), kv.data(), o.data(), KvDtype::kBF16), threads);
    for (size_t i = 0; i < o.size(); ++i) out[i] = from_bits(o[i]);
  }
  double err = 0;
  for (size_t i = 0; i < out.size(); ++i) err = std::max(err, std::abs(out[i] - ref[i]));
  return err;
}

template <typename F>
bool throws(F f) {
  try {
    f();
  } catch (const std::invalid_argument&) {
    return true;
  }
  return false;
}

void test_bad_inputs() {
  std::mt19937 rng(7);
  Problem p = make_problem(rng, 4, 2, 8, 4, false);
  std::vector<float> out(p.q.size());
  auto call = [&](Problem& pp) {
    paged_attention(args_for(pp, pp.q.data(), pp.kv.data(), out.data(), KvDtype::kF32), 2);
  };
  CHECK(!throws([&] { call(p); }));
  Problem bad = p;
  bad.kv_indices[0] = p.num_blocks;  // block id out of range
  CHECK(throws([&] { call(bad); }));
  bad = p;
  bad.seq_lens[0] = 0;  // fewer context tokens than query tokens
  CHECK(throws([&] { call(bad); }));
  bad = p;
  bad.seq_lens[0] += 4 * p.bs;  // the block table is too short
  CHECK(throws([&] { call(bad); }));
  bad = p;
  bad.hq = 3;  // not a multiple of hkv
  CHECK(throws([&] { call(bad); }));
  PagedAttentionArgs a = args_for(p, p.q.data(), p.kv.data(), out.data(), KvDtype::kF32);
  a.num_tokens += 1;  // qo_indptr[-1] != rows of q
  CHECK(throws([&] { paged_attention(a, 1); }));

  std::vector<float> kv(2 * 2 * 4 * 2 * 8, 0.0f), k(3 * 2 * 8, 1.0f), v(3 * 2 * 8, 2.0f);
  std::vector<int64_t> slots{5, 0, 2};
  WriteKvArgs w{kv.data(), k.data(), v.data(), slots.data(), 3, 2, 2, 8, 4, KvDtype::kF32};
  write_kv(w);
  CHECK(kv[((1 * 2 + 0) * 4 + 1) * 16] == 1.0f);  // slot 5: block 1 offset 1, K
  CHECK(kv[((1 * 2 + 1) * 4 + 1) * 16] == 2.0f);  // ... and V
  CHECK(kv[((0 * 2 + 1) * 4 + 2) * 16 + 15] == 2.0f);
  slots[1] = 8;  // out of range: nothing may be written
  std::fill(kv.begin(), kv.end(), 0.0f);
  CHECK(throws([&] { write_kv(w); }));
  CHECK(std::all_of(kv.begin(), kv.end(), [](float x) { return x == 0.0f; }));
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  int cases = 0;
  for (const char* isa : {"generic", "avx2", "avx512"}) {
    try {
      set_isa(isa);
    } catch (const std::invalid_argument&) {
      std::printf("skip ISA %s (not supported by this CPU)\n", isa);
      continue;
    }
    // Every (group, block size); each head dim meets every group and every block size.
    const int dims[] = {8, 32, 64, 128};
    for (int gi = 0; gi < 4; ++gi)
      for (int bi = 0; bi < 3; ++bi)
        for (bool bf16 : {false, true}) {
          const int group = 1 << gi, bs = 8 << bi, d = dims[(gi + bi + int(bf16)) % 4];
          const int threads = 1 + (cases % 3);
          const double err = run_case(rng, 2 * group, 2, d, bs, bf16, threads);
          const double tol = bf16 ? 2e-2 : 2e-5;
          if (err > tol) {
            std::fprintf(stderr, "%s g=%d d=%d bs=%d bf16=%d: max error %g\n", isa, group, d, bs,
                         int(bf16), err);
            ++g_failures;
          }
          ++cases;
        }
  }
  set_isa("auto");
  test_bad_inputs();
  std::printf("%d cases, %d failures (isa %s)\n", cases, g_failures, current_isa());
  return g_failures == 0 ? 0 : 1;
}
