#include "thread_pool.h"

#include <unistd.h>

namespace pyserve::kernels {

namespace {
constexpr int kMaxWorkers = 255;
}

ThreadPool& ThreadPool::instance() {
  // NOTE: deliberately never destroyed: worker threads block on the condition variable until
  // the process exits, and a forked child abandons its parent's pool (it has no threads).
  static ThreadPool* pool = new ThreadPool();
  static pid_t owner = getpid();
  if (getpid() != owner) {
    pool = new ThreadPool();
    owner = getpid();
  }
  return *pool;
}

void ThreadPool::drain(std::atomic<int64_t>& next, int64_t n,
                       const std::function<void(int64_t)>& fn) {
  for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
}

void ThreadPool::grow(int workers) {
  while (int(workers_.size()) < workers) {
    const int index = int(workers_.size());
    uint64_t seen;
    {
      std::lock_guard<std::mutex> lock(mu_);
      seen = generation_;  // NOTE: the new worker joins the job about to be published
    }
    workers_.emplace_back([this, index, seen] { worker_loop(index, seen); });
    workers_.back().detach();
  }
}

void ThreadPool::run(int64_t n, int num_threads, const std::function<void(int64_t)>& fn) {
  int helpers = num_threads - 1;
  if (helpers > kMaxWorkers) helpers = kMaxWorkers;
  if (int64_t(helpers) > n - 1) helpers = int(n - 1);
  std::unique_lock<std::mutex> run_lock(run_mu_, std::try_to_lock);
  if (helpers <= 0 || !run_lock.owns_lock()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  grow(helpers);
  {
    std::lock_guard<std::mutex> lock(mu_);
    n_ = n;
    fn_ = &fn;
    next_.store(0);
    participants_ = helpers;
    pending_ = helpers;
    ++generation_;
  }
  wake_.notify_all();
  drain(next_, n, fn);
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [this] { return pending_ == 0; });
  fn_ = nullptr;
}

void ThreadPool::worker_loop(int index, uint64_t seen) {
  for (;;) {
    const std::function<void(int64_t)>* fn = nullptr;
    int64_t n = 0;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= participants_) continue;
      fn = fn_;
      n = n_;
    }
    drain(next_, n, *fn);
    std::lock_guard<std::mutex> lock(mu_);
    if (--pending_ == 0) done_.notify_one();
  }
}

}  // namespace pyserve::kernels
