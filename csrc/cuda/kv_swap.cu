// Batched KV swap (see kv_swap.h). The copying itself is LaunchCopyBlocks (block_copy.cu).
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include "block_copy.h"
#include "kv_swap.h"

namespace pyserve::cuda {
namespace {

// Makes `device` current for the scope and restores the previous device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    CheckCuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) CheckCuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// Returns the device-usable address of `base`, checking where it lives.
uint64_t DeviceAddress(uint64_t base, bool expect_host, int device, size_t layer) {
  const std::string where =
      std::string(expect_host ? "cpu" : "gpu") + " base of layer " + std::to_string(layer);
  if (base == 0 || base % 16 != 0) {
    throw std::invalid_argument(where + " must be a non-null 16-byte-aligned address");
  }
  cudaPointerAttributes attr{};
  CheckCuda(cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(base)),
            "cudaPointerGetAttributes");
  if (expect_host) {
    if (attr.type != cudaMemoryTypeHost || attr.devicePointer == nullptr) {
      throw std::invalid_argument(where + " is not pinned (page-locked) host memory");
    }
    return reinterpret_cast<uint64_t>(attr.devicePointer);
  }
  if (attr.type != cudaMemoryTypeDevice || attr.device != device) {
    throw std::invalid_argument(where + " is not device memory of device " +
                                std::to_string(device));
  }
  return base;
}

}  // namespace

void CheckCuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorString(err));
  }
}

StreamFence::StreamFence() {
  CheckCuda(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), "cudaEventCreate");
}

StreamFence::~StreamFence() {
  if (event_ != nullptr) cudaEventDestroy(event_);
}

void StreamFence::Record(cudaStream_t stream) {
  CheckCuda(cudaEventRecord(event_, stream), "cudaEventRecord");
}

void StreamFence::Wait(cudaStream_t stream) {
  CheckCuda(cudaStreamWaitEvent(stream, event_, 0), "cudaStreamWaitEvent");
}

void StreamFence::Synchronize() { CheckCuda(cudaEventSynchronize(event_), "cudaEventSynchronize"); }

bool StreamFence::Query() {
  const cudaError_t err = cudaEventQuery(event_);
  if (err == cudaErrorNotReady) {
    cudaGetLastError();  // NOTE: clears the non-sticky "not ready" status.
    return false;
  }
  CheckCuda(err, "cudaEventQuery");
  return true;
}

void StreamWaitStream(cudaStream_t waiting, cudaStream_t signalling, StreamFence& fence) {
  fence.Record(signalling);
  fence.Wait(waiting);
}

KvSwapper::KvSwapper(const std::vector<uint64_t>& gpu_bases, const std::vector<uint64_t>& cpu_bases,
                     int64_t block_bytes, int64_t num_gpu_blocks, int64_t num_cpu_blocks,
                     int device)
    : num_layers_(static_cast<int>(gpu_bases.size())),
      block_bytes_(block_bytes),
      num_gpu_blocks_(num_gpu_blocks),
      num_cpu_blocks_(num_cpu_blocks),
      device_(device) {
  if (gpu_bases.empty() || gpu_bases.size() > 65535) {
    throw std::invalid_argument("gpu_bases must name 1..65535 layers");
  }
  if (!cpu_bases.empty() && cpu_bases.size() != gpu_bases.size()) {
    throw std::invalid_argument("cpu_bases must be empty or have one base per layer (" +
                                std::to_string(gpu_bases.size()) + "), got " +
                                std::to_string(cpu_bases.size()));
  }
  if (block_bytes <= 0 || block_bytes % 16 != 0) {
    throw std::invalid_argument("block_bytes must be a positive multiple of 16, got " +
                                std::to_string(block_bytes));
  }
  if (num_gpu_blocks <= 0 || num_cpu_blocks < 0 || (cpu_bases.empty() != (num_cpu_blocks == 0))) {
    throw std::invalid_argument("num_gpu_blocks must be > 0 and num_cpu_blocks > 0 iff cpu_bases");
  }
  DeviceGuard guard(device);
  for (size_t l = 0; l < gpu_bases.size(); ++l) {
    gpu_bases_.push_back(DeviceAddress(gpu_bases[l], false, device, l));
  }
  for (size_t l = 0; l < cpu_bases.size(); ++l) {
    cpu_bases_.push_back(DeviceAddress(cpu_bases[l], true, device, l));
  }
  cpu_host_bases_ = cpu_bases;
  std::vector<uint64_t> table(gpu_bases_);
  table.resize(2 * gpu_bases_.size(), 0);
  std::copy(cpu_bases_.begin(), cpu_bases_.end(), table.begin() + num_layers_);
  const size_t bytes = table.size() * sizeof(uint64_t);
  CheckCuda(cudaMalloc(reinterpret_cast<void**>(&device_bases_), bytes), "cudaMalloc");
  const cudaError_t err = cudaMemcpy(device_bases_, table.data(), bytes, cudaMemcpyHostToDevice);
  if (err != cudaSuccess) {
    cudaFree(device_bases_);
    CheckCuda(err, "cudaMemcpy of the layer base table");
  }
}

KvSwapper::~KvSwapper() {
  if (device_bases_ != nullptr) cudaFree(device_bases_);
}

void KvSwapper::ValidatePairs(const int32_t* pairs, int64_t n, PairKind kind) const {
  if (n < 0) throw std::invalid_argument("number of pairs must be >= 0");
  if (n > 0 && kind != PairKind::kGpuToGpu && cpu_bases_.empty()) {
    throw std::invalid_argument("this swapper has no CPU pool: swap pairs must be empty");
  }
  const int64_t src_limit = kind == PairKind::kCpuToGpu ? num_cpu_blocks_ : num_gpu_blocks_;
  const int64_t dst_limit = kind == PairKind::kGpuToCpu ? num_cpu_blocks_ : num_gpu_blocks_;
  std::vector<int32_t> dsts(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t src = pairs[2 * i];
    const int64_t dst = pairs[2 * i + 1];
    if (src < 0 || src >= src_limit || dst < 0 || dst >= dst_limit) {
      throw std::invalid_argument("block pair " + std::to_string(i) + " (" + std::to_string(src) +
                                  ", " + std::to_string(dst) + ") out of range: source < " +
                                  std::to_string(src_limit) + ", destination < " +
                                  std::to_string(dst_limit));
    }
    dsts[i] = static_cast<int32_t>(dst);
  }
  // NOTE: all pairs of a call are copied concurrently, so a destination written twice, or (for
  // GPU -> GPU) a destination that is also a source, would race.
  std::sort(dsts.begin(), dsts.end());
  if (std::adjacent_find(dsts.begin(), dsts.end()) != dsts.end()) {
    throw std::invalid_argument("destination blocks must be distinct within one call");
  }
  if (kind == PairKind::kGpuToGpu) {
    for (int64_t i = 0; i < n; ++i) {
      if (std::binary_search(dsts.begin(), dsts.end(), pairs[2 * i])) {
        throw std::invalid_argument("copy pair " + std::to_string(i) + " reads block " +
                                    std::to_string(pairs[2 * i]) +
                                    ", which another pair of the same call writes");
      }
    }
  }
}

void KvSwapper::Launch(const uint64_t* src_bases, const uint64_t* dst_bases, const int32_t* pairs,
                       int64_t n, cudaStream_t stream) {
  DeviceGuard guard(device_);
  auto args = std::make_unique<CopyBlocksArgs>();
  args->src_bases = src_bases;
  args->dst_bases = dst_bases;
  args->block_bytes = block_bytes_;
  args->num_layers = num_layers_;
  for (int64_t start = 0; start < n; start += kMaxPairsPerLaunch) {
    const int64_t count = std::min<int64_t>(kMaxPairsPerLaunch, n - start);
    args->num_pairs = static_cast<int32_t>(count);
    std::copy(pairs + 2 * start, pairs + 2 * (start + count), args->pairs);
    CheckCuda(LaunchCopyBlocks(*args, stream), "CopyBlocksKernel launch");
  }
}

void KvSwapper::SwapOut(const int32_t* pairs, int64_t n, cudaStream_t stream) {
  ValidatePairs(pairs, n, PairKind::kGpuToCpu);
  Launch(device_bases_, device_bases_ + num_layers_, pairs, n, stream);
}

void KvSwapper::SwapIn(const int32_t* pairs, int64_t n, cudaStream_t stream) {
  ValidatePairs(pairs, n, PairKind::kCpuToGpu);
  Launch(device_bases_ + num_layers_, device_bases_, pairs, n, stream);
}

void KvSwapper::Copy(const int32_t* pairs, int64_t n, cudaStream_t stream) {
  ValidatePairs(pairs, n, PairKind::kGpuToGpu);
  Launch(device_bases_, device_bases_, pairs, n, stream);
}

void KvSwapper::PerBlock(const std::vector<uint64_t>& src, const std::vector<uint64_t>& dst,
                         const int32_t* pairs, int64_t n, cudaStream_t stream) {
  DeviceGuard guard(device_);
  for (int l = 0; l < num_layers_; ++l) {
    for (int64_t i = 0; i < n; ++i) {
      const auto* s = reinterpret_cast<const char*>(src[l]) + pairs[2 * i] * block_bytes_;
      auto* d = reinterpret_cast<char*>(dst[l]) + pairs[2 * i + 1] * block_bytes_;
      CheckCuda(cudaMemcpyAsync(d, s, block_bytes_, cudaMemcpyDefault, stream), "cudaMemcpyAsync");
    }
  }
}

void KvSwapper::SwapOutPerBlock(const int32_t* pairs, int64_t n, cudaStream_t stream) {
  ValidatePairs(pairs, n, PairKind::kGpuToCpu);
  PerBlock(gpu_bases_, cpu_host_bases_, pairs, n, stream);
}

void KvSwapper::SwapInPerBlock(const int32_t* pairs, int64_t n, cudaStream_t stream) {
  ValidatePairs(pairs, n, PairKind::kCpuToGpu);
  PerBlock(cpu_host_bases_, gpu_bases_, pairs, n, stream);
}

}  // namespace pyserve::cuda
