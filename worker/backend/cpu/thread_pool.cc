#include "worker/backend/cpu/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tpserve {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// How long a thread polls before sleeping: long enough to bridge the gap between two kernels of
// one forward pass, short enough not to burn a shared core when idle.
constexpr auto kSpin = std::chrono::microseconds(100);

// Waits until `a` differs from `old`: spin, then futex sleep.
template <typename T>
void SpinThenWait(const std::atomic<T>& a, T old) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0;; ++i) {
    if (a.load(std::memory_order_acquire) != old) return;
    CpuRelax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() - start > kSpin) break;
  }
  while (a.load(std::memory_order_acquire) == old) a.wait(old, std::memory_order_acquire);
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) : num_threads_(std::max(1, num_threads)) {
  for (int i = 1; i < num_threads_; ++i) threads_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::Work(Job& job) {
  int64_t u = job.next.load(std::memory_order_relaxed);
  while (u < job.units) {
    const int64_t take = std::max<int64_t>(1, (job.units - u) / job.divisor);
    if (!job.next.compare_exchange_weak(u, u + take)) continue;  // u reloaded
    const int64_t begin = u * job.grain;
    (*job.fn)(begin, std::min(job.n, (u + take) * job.grain));
    if (job.done.fetch_add(take) + take == job.units) job.done.notify_all();
    u = job.next.load(std::memory_order_relaxed);
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  while (true) {
    SpinThenWait(generation_, seen);
    seen = generation_.load();
    if (stop_.load()) return;
    // Announce before looking at the job, so the caller cannot retire it under us (seq_cst on
    // both sides: either we see nullptr, or the caller sees us active and waits).
    active_.fetch_add(1);
    if (Job* job = job_.load()) Work(*job);
    active_.fetch_sub(1);
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t units = (n + grain - 1) / grain;
  if (num_threads_ == 1 || units == 1) {
    fn(0, n);
    return;
  }
  // The first chunks are a 1 / (2 threads) share, the last ones single units: few atomics,
  // and a slow thread leaves at most one small chunk for the others to wait on.
  Job job{.fn = &fn, .n = n, .grain = grain, .units = units, .divisor = 2 * num_threads_};

  job_.store(&job);
  generation_.fetch_add(1);
  generation_.notify_all();
  Work(job);
  for (int64_t d = job.done.load(); d < job.units; d = job.done.load()) SpinThenWait(job.done, d);
  job_.store(nullptr);
  while (active_.load() != 0) CpuRelax();  // a late worker only finds no chunks left
}

}  // namespace tpserve
