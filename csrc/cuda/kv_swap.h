// Batched KV swap between the GPU KV cache and a pinned CPU pool, plus stream-ordering helpers.
//
// A KvSwapper knows the per-layer base addresses of the GPU cache and of the pinned CPU pool.
// swap_out / swap_in / copy move many blocks of every layer in one kernel launch each
// (LaunchCopyBlocks), on a stream the caller gives. StreamFence orders that stream against the
// compute stream with a CUDA event, on the GPU, without blocking the host.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace pyserve::cuda {

// Throws std::runtime_error naming `what` when `err` is not cudaSuccess.
void CheckCuda(cudaError_t err, const char* what);

// Owns one CUDA event (timing disabled). Non-copyable; movable.
class StreamFence {
 public:
  StreamFence();
  ~StreamFence();
  StreamFence(const StreamFence&) = delete;
  StreamFence& operator=(const StreamFence&) = delete;

  // Marks the point reached by `stream`'s queued work.
  void Record(cudaStream_t stream);
  // Makes `stream`'s later work wait, on the GPU, for the last recorded point.
  void Wait(cudaStream_t stream);
  // Blocks the host until the last recorded point is reached.
  void Synchronize();
  // True when the last recorded point has been reached (or nothing was recorded).
  bool Query();

 private:
  cudaEvent_t event_ = nullptr;
};

// Makes `waiting`'s later work wait for all work queued so far on `signalling` (GPU-side).
void StreamWaitStream(cudaStream_t waiting, cudaStream_t signalling, StreamFence& fence);

// How a pair's two block ids are read.
enum class PairKind { kGpuToCpu, kCpuToGpu, kGpuToGpu };

class KvSwapper {
 public:
  // gpu_bases / cpu_bases: per-layer base addresses of the GPU caches and of the pinned CPU pool
  // (cpu_bases may be empty: copy-on-write only). Every layer's block has `block_bytes` bytes,
  // blocks are contiguous inside a layer. Host bases must be pinned (page-locked) memory; they
  // are translated to their device-mapped addresses here. `device` is the CUDA device ordinal.
  // NOTE: the swapper does not own the caches; they must outlive it.
  KvSwapper(const std::vector<uint64_t>& gpu_bases, const std::vector<uint64_t>& cpu_bases,
            int64_t block_bytes, int64_t num_gpu_blocks, int64_t num_cpu_blocks, int device);
  ~KvSwapper();
  KvSwapper(const KvSwapper&) = delete;
  KvSwapper& operator=(const KvSwapper&) = delete;

  // pairs: host int32 array [n, 2], row-major. Each call enqueues ceil(n / kMaxPairsPerLaunch)
  // kernel launches (one for n <= kMaxPairsPerLaunch) on `stream` and returns without waiting.
  void SwapOut(const int32_t* pairs, int64_t n, cudaStream_t stream);  // (gpu, cpu) pairs
  void SwapIn(const int32_t* pairs, int64_t n, cudaStream_t stream);   // (cpu, gpu) pairs
  void Copy(const int32_t* pairs, int64_t n, cudaStream_t stream);     // (src gpu, dst gpu)

  // The baseline the kernel replaces: one cudaMemcpyAsync per block per layer.
  void SwapOutPerBlock(const int32_t* pairs, int64_t n, cudaStream_t stream);
  void SwapInPerBlock(const int32_t* pairs, int64_t n, cudaStream_t stream);

  int num_layers() const { return num_layers_; }
  int64_t block_bytes() const { return block_bytes_; }
  int64_t num_gpu_blocks() const { return num_gpu_blocks_; }
  int64_t num_cpu_blocks() const { return num_cpu_blocks_; }
  int device() const { return device_; }

 private:
  // Throws std::invalid_argument naming the first pair whose ids are out of range, or when
  // destinations repeat (or, for GPU -> GPU, a destination is also a source).
  void ValidatePairs(const int32_t* pairs, int64_t n, PairKind kind) const;
  void Launch(const uint64_t* src_bases, const uint64_t* dst_bases, const int32_t* pairs, int64_t n,
              cudaStream_t stream);
  void PerBlock(const std::vector<uint64_t>& src, const std::vector<uint64_t>& dst,
                const int32_t* pairs, int64_t n, cudaStream_t stream);

  int num_layers_;
  int64_t block_bytes_;
  int64_t num_gpu_blocks_;
  int64_t num_cpu_blocks_;
  int device_;
  std::vector<uint64_t> gpu_bases_;       // host copies, for the per-block loop
  std::vector<uint64_t> cpu_bases_;       // device-mapped addresses of the pinned pool
  std::vector<uint64_t> cpu_host_bases_;  // the same pool's host addresses, for cudaMemcpyAsync
  // NOTE: one device allocation [2 * num_layers]: GPU bases then mapped CPU bases.
  uint64_t* device_bases_ = nullptr;
};

}  // namespace pyserve::cuda
