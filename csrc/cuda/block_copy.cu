// Kernel behind every KV block move: copy-on-write, swap-out and swap-in (see block_copy.h).
#include "block_copy.h"

namespace pyserve::cuda {
namespace {

// Grid: x = num_pairs * chunks_per_block, y = num_layers. CTA (x, y) copies chunk
// (x % chunks_per_block) of pair (x / chunks_per_block) in layer y. Each thread first issues
// kCopyUnroll independent 16-byte loads, then the stores, so that many reads are in flight
// (this matters when the source is pinned host memory read over PCIe).
__global__ void __launch_bounds__(kCopyThreads)
    CopyBlocksKernel(const __grid_constant__ CopyBlocksArgs args, int64_t chunks_per_block) {
  const int64_t pair = blockIdx.x / chunks_per_block;
  const int64_t chunk = blockIdx.x % chunks_per_block;
  const int layer = blockIdx.y;
  const int64_t block_vecs = args.block_bytes / 16;
  const int64_t src_block = args.pairs[2 * pair];
  const int64_t dst_block = args.pairs[2 * pair + 1];
  // NOTE: loads use ld.global.cg (__ldcg: L2 only, not the read-only .nc path): each byte is read
  // once, and it is the conservative choice for mapped host memory.
  const int4* src = reinterpret_cast<const int4*>(args.src_bases[layer]) + src_block * block_vecs;
  int4* __restrict__ dst = reinterpret_cast<int4*>(args.dst_bases[layer]) + dst_block * block_vecs;

  const int64_t first = chunk * (kCopyChunkBytes / 16) + threadIdx.x;
  int4 vals[kCopyUnroll];
#pragma unroll
  for (int u = 0; u < kCopyUnroll; ++u) {
    const int64_t i = first + int64_t{u} * kCopyThreads;
    if (i < block_vecs) vals[u] = __ldcg(src + i);
  }
#pragma unroll
  for (int u = 0; u < kCopyUnroll; ++u) {
    const int64_t i = first + int64_t{u} * kCopyThreads;
    if (i < block_vecs) dst[i] = vals[u];
  }
}

}  // namespace

cudaError_t LaunchCopyBlocks(const CopyBlocksArgs& args, cudaStream_t stream) {
  if (args.num_pairs == 0 || args.num_layers == 0) return cudaSuccess;
  if (args.num_pairs < 0 || args.num_pairs > kMaxPairsPerLaunch || args.num_layers < 0 ||
      args.num_layers > 65535 || args.block_bytes <= 0 || args.block_bytes % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t chunks_per_block = (args.block_bytes + kCopyChunkBytes - 1) / kCopyChunkBytes;
  const int64_t grid_x = chunks_per_block * args.num_pairs;
  if (grid_x > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(args.num_layers));
  CopyBlocksKernel<<<grid, kCopyThreads, 0, stream>>>(args, chunks_per_block);
  return cudaGetLastError();
}

}  // namespace pyserve::cuda
