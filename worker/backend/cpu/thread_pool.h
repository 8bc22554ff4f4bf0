// A fixed set of threads that split loops whose bodies last microseconds.
//
// Decode runs a few hundred small matmuls per token, so waking threads through a mutex and
// condition variable per call would cost more than the work. Workers spin briefly on an atomic
// generation counter after each job (the next kernel usually follows within microseconds) and
// then sleep on it (std::atomic::wait, a futex).
//
// Work is handed out in chunks from an atomic counter, and the caller works too: when the
// machine is oversubscribed and a worker is not scheduled, the caller (or the other workers)
// take its chunks instead of waiting a whole scheduler time slice for it. Chunks shrink as the
// work runs out (each takes a share of what is left), so the threads finish close together: one
// thread waiting for another's last large chunk was ~6 % of a 32-sequence decode step.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace tpserve {

class ThreadPool {
 public:
  // `num_threads` counts the caller: 1 means no extra threads.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return num_threads_; }

  // Calls fn(begin, end) over chunks covering [0, n) exactly once, in parallel; chunk bounds are
  // multiples of `grain` (except n). Returns when every chunk is done. Not reentrant: fn must
  // not call ParallelFor.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  struct Job {
    const std::function<void(int64_t, int64_t)>* fn;
    int64_t n;
    int64_t grain;
    int64_t units;                 // ceil(n / grain)
    int64_t divisor;               // a chunk takes 1 / divisor of the units left (at least one)
    std::atomic<int64_t> next{0};  // next unit to hand out
    std::atomic<int64_t> done{0};  // units finished
  };
  static void Work(Job& job);
  void WorkerLoop();

  int num_threads_;
  std::vector<std::thread> threads_;
  std::atomic<Job*> job_{nullptr};
  std::atomic<int> active_{0};  // workers currently holding a Job pointer
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace tpserve
