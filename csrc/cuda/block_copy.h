// Batched copy of KV-cache blocks across all layers in one kernel launch.
//
// One launch copies `num_pairs` blocks of every layer: for each layer l and pair (s, d) it copies
// `block_bytes` bytes from src_bases[l] + s * block_bytes to dst_bases[l] + d * block_bytes.
// The same kernel serves copy-on-write (GPU -> GPU), swap-out (GPU -> pinned host) and swap-in
// (pinned host -> GPU): pinned host memory is read and written directly through its mapped
// address (unified virtual addressing), 16 bytes per access.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pyserve::cuda {

// Most block pairs one launch carries. The pairs travel as kernel parameters (no staging buffer,
// no host-to-device copy, nothing to keep alive after the launch); CUDA 12.1+ on sm_70+ allows
// up to 32764 bytes of parameters. Callers split larger batches into several launches.
inline constexpr int kMaxPairsPerLaunch = 3840;

// Threads per CTA and 16-byte vectors each thread moves per CTA (loads issued before stores).
inline constexpr int kCopyThreads = 256;
inline constexpr int kCopyUnroll = 4;
inline constexpr int64_t kCopyChunkBytes = int64_t{kCopyThreads} * kCopyUnroll * 16;

// NOTE: passed by value as a __grid_constant__ kernel parameter; keep it under 32764 bytes.
struct CopyBlocksArgs {
  // Device arrays [num_layers] of device-accessible base addresses (device memory, or the mapped
  // address of pinned host memory). Each base must be 16-byte aligned.
  const uint64_t* src_bases;
  const uint64_t* dst_bases;
  int64_t block_bytes;  // bytes of one block of one layer; a positive multiple of 16
  int32_t num_layers;
  int32_t num_pairs;                      // 0..kMaxPairsPerLaunch
  int32_t pairs[2 * kMaxPairsPerLaunch];  // (src_block, dst_block) pairs, row-major
};

static_assert(sizeof(CopyBlocksArgs) <= 32764, "kernel parameters exceed the CUDA limit");

// Enqueues one launch on `stream` (no synchronization). Block ids are not range-checked here:
// callers validate them. Returns the launch error (cudaSuccess when nothing to do).
cudaError_t LaunchCopyBlocks(const CopyBlocksArgs& args, cudaStream_t stream);

}  // namespace pyserve::cuda
