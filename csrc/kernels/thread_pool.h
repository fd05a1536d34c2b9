// A small persistent thread pool for the CPU kernels (no OpenMP runtime: the torch wheel
// bundles its own libgomp, and a second one in the process would oversubscribe the cores).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace pyserve::kernels {

class ThreadPool {
 public:
  // The process-wide pool. NOTE: recreated (the old one abandoned) in a forked child, whose
  // copy of the pool has no threads.
  static ThreadPool& instance();

  // Runs fn(i) for every i in [0, n) on up to `num_threads` threads, the caller included, and
  // returns when all are done. fn must not throw. If another call is in progress (another
  // Python thread), this one runs on the calling thread alone.
  void run(int64_t n, int num_threads, const std::function<void(int64_t)>& fn);

  ThreadPool() = default;
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

 private:
  void worker_loop(int index, uint64_t seen);
  void grow(int workers);
  static void drain(std::atomic<int64_t>& next, int64_t n, const std::function<void(int64_t)>& fn);

  std::mutex run_mu_;  // held for a whole run(): one job at a time
  std::mutex mu_;      // guards the job fields below
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  uint64_t generation_ = 0;
  int participants_ = 0;  // workers (by index) that take part in the current job
  int pending_ = 0;       // participating workers not yet finished
  int64_t n_ = 0;
  const std::function<void(int64_t)>* fn_ = nullptr;
  std::atomic<int64_t> next_{0};
};

}  // namespace pyserve::kernels
