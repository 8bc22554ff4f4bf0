// CUDA emulator (tests only): device memory, the operation queue, fibers for kernel threads, and
// the runtime API functions. The model is described in include/tpserve_cuda_emulator.h.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tpserve_cuda_emulator.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// Bounds of the section that holds every kernel's __shared__ variables (cuda_runtime.h); the
// linker defines them, null when no kernel declares any.
extern "C" char __start_tpserve_shared[] __attribute__((weak));
extern "C" char __stop_tpserve_shared[] __attribute__((weak));

struct CUstream_st {
  unsigned flags = 0;
};
// A captured graph, and its instantiation: the operations in capture order.
struct CUgraph_st {
  std::vector<std::function<bool()>> ops;
};
struct CUgraphExec_st {
  std::vector<std::function<bool()>> ops;
};
struct CUevent_st {
  bool recorded = false;
  bool polled = false;  // a query found this recording's work pending (counted as a host wait)
  // Set by the marker the last cudaEventRecord queued. Shared with it: CUDA lets an event be
  // destroyed while its record is still pending.
  std::shared_ptr<bool> done = std::make_shared<bool>(false);
};

namespace tpserve_emu {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kArenaBytes = size_t{1} << 40;  // address space only (PROT_NONE, NORESERVE)
constexpr size_t kDefaultSmem = 48 * 1024;
constexpr size_t kMaxSmemOptin = 232448;  // sm_90: 227 KiB per block
constexpr size_t kFiberStack = 256 * 1024;
constexpr int kMaxThreads = 1024;

size_t RoundUp(size_t n, size_t q) { return (n + q - 1) / q * q; }

struct Allocation {
  uintptr_t region;  // the protection unit it lies in
  uintptr_t user;    // what cudaMalloc returned (256-byte aligned)
  size_t bytes;      // as asked: copies and cuBLAS operands must stay inside
};

// Whole 2 MiB pages followed by a guard page that is never accessible. A large allocation has
// its own region and ends where the guard begins; small ones share a slab region.
struct Region {
  size_t bytes = 0;
  size_t used = 0;  // slab fill
  int live = 0;     // live allocations inside
  bool slab = false;
};

struct Device {
  std::mutex mu;
  char* arena = nullptr;
  size_t bump = 0;                       // next free byte of the arena (never reused)
  std::map<uintptr_t, Allocation> live;  // by user pointer
  std::map<uintptr_t, Region> regions;   // by start: those with live allocations
  uintptr_t open_slab = 0;               // where small allocations go, 0: none
  std::map<uintptr_t, size_t> pinned;    // cudaMallocHost: start -> bytes
  tpserve_emu::Counters counters;
  size_t capacity = 0, in_use = 0;
  // Per stream, in submission order; `seq` orders operations across streams. An operation
  // returns false while it must wait (a collective whose peers have not arrived).
  struct Op {
    uint64_t seq;
    std::function<bool()> run;
  };
  std::map<cudaStream_t, std::deque<Op>> queues;
  uint64_t next_seq = 0;
  size_t pending = 0;
  cudaError_t last_error = cudaSuccess;
  int device_count = 1;
  std::map<const void*, size_t> smem_optin;  // kernel -> MaxDynamicSharedMemorySize
  bool flushing = false;
  // Streams being captured: what they were given so far, and whether the capture is still good.
  struct Capture {
    std::vector<std::function<bool()>> ops;
    bool invalidated = false;
  };
  std::map<cudaStream_t, Capture> captures;
};

thread_local int t_current_device = 0;  // like CUDA's: per host thread

Device& Dev() {
  static Device* d = [] {
    auto* dev = new Device;
    const char* count = std::getenv("TPSERVE_CUDA_EMU_DEVICES");
    if (count != nullptr) dev->device_count = std::atoi(count);
    const char* gib = std::getenv("TPSERVE_CUDA_EMU_MEMORY_GIB");
    dev->capacity = size_t(gib != nullptr ? std::atoi(gib) : 8) << 30;
    void* base =
        mmap(nullptr, kArenaBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) Fatal("cannot reserve the device arena");
    dev->arena = static_cast<char*>(base);
    madvise(base, kArenaBytes, MADV_HUGEPAGE);  // best effort; see cudaMalloc
    return dev;
  }();
  return *d;
}

void Protect(Device& d, int prot) {
  for (auto& [start, r] : d.regions) {
    if (mprotect(reinterpret_cast<void*>(start), r.bytes, prot) != 0) {
      Fatal("mprotect of a device region failed");
    }
  }
}

void PushUncounted(Device& d, cudaStream_t stream, std::function<bool()> op) {
  if (auto it = d.captures.find(stream); it != d.captures.end()) {
    if (!it->second.invalidated) it->second.ops.push_back(std::move(op));
    return;
  }
  d.queues[stream].push_back(Device::Op{d.next_seq++, std::move(op)});
  ++d.pending;
}
void Push(Device& d, cudaStream_t stream, std::function<bool()> op) {
  PushUncounted(d, stream, std::move(op));
  ++d.counters.operations;
}

// A call that cannot be part of a capture on `stream` (a wait for it, a pageable copy, an event
// record): CUDA fails it and invalidates the capture. True when that happened.
bool RefusedByCapture(Device& d, cudaStream_t stream) {
  auto it = d.captures.find(stream);
  if (it == d.captures.end()) return false;
  it->second.invalidated = true;
  d.last_error = cudaErrorStreamCaptureUnsupported;
  return true;
}
// A device-wide wait while any stream captures: refused, and every capture invalidated.
bool RefusedByAnyCapture(Device& d) {
  if (d.captures.empty()) return false;
  for (auto& [stream, c] : d.captures) c.invalidated = true;
  d.last_error = cudaErrorStreamCaptureUnsupported;
  return true;
}

// True when [p, p + bytes) lies inside one cudaMallocHost allocation.
bool IsPinnedLocked(const Device& d, const void* p, size_t bytes) {
  const auto u = reinterpret_cast<uintptr_t>(p);
  auto it = d.pinned.upper_bound(u);
  if (it == d.pinned.begin()) return false;
  --it;
  return u + bytes <= it->first + it->second;
}
void Push(Device& d, cudaStream_t stream, std::function<void()> op) {
  Push(d, stream, std::function<bool()>([op = std::move(op)]() {
         op();
         return true;
       }));
}

// Runs what can run with device memory accessible: the oldest runnable head of any stream first,
// so that without collectives the order is the submission order. Returns false when operations
// remain that wait for other threads (collective peers). Caller holds d.mu.
bool FlushOnce(Device& d) {
  if (d.pending == 0) return true;
  if (d.flushing) Fatal("a device operation called back into the CUDA API");
  d.flushing = true;
  Protect(d, PROT_READ | PROT_WRITE);
  for (;;) {
    std::vector<std::pair<uint64_t, std::deque<Device::Op>*>> heads;
    for (auto& [stream, q] : d.queues) {
      if (!q.empty()) heads.emplace_back(q.front().seq, &q);
    }
    std::sort(heads.begin(), heads.end());
    bool ran = false;
    for (auto& [seq, q] : heads) {
      if (q->front().run()) {
        q->pop_front();
        --d.pending;
        ran = true;
        break;
      }
    }
    if (!ran) break;
  }
  Protect(d, PROT_NONE);
  d.flushing = false;
  return d.pending == 0;
}

// Runs queued work until `done()` holds, waiting (with d.mu released) for collective peers on
// other threads. Caller holds d.mu through `lock`.
void FlushUntil(Device& d, std::unique_lock<std::mutex>& lock, const std::function<bool()>& done) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    FlushOnce(d);
    if (done()) return;
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::microseconds(50));
    lock.lock();
    if (std::chrono::steady_clock::now() - start > std::chrono::seconds(120)) {
      Fatal(
          "a synchronising call waited 120 s for a collective whose peers never came (on a "
          "GPU: a hang)");
    }
  }
}
// Everything queued on every stream.
void FlushLocked(Device& d, std::unique_lock<std::mutex>& lock) {
  FlushUntil(d, lock, [&d] { return d.pending == 0; });
}
// Everything queued on `stream`.
void FlushStream(Device& d, std::unique_lock<std::mutex>& lock, cudaStream_t stream) {
  FlushUntil(d, lock, [&d, stream] {
    auto it = d.queues.find(stream);
    return it == d.queues.end() || it->second.empty();
  });
}

bool IsDeviceLocked(Device& d, const void* p, size_t bytes) {
  const auto u = reinterpret_cast<uintptr_t>(p);
  auto it = d.live.upper_bound(u);
  if (it == d.live.begin()) return false;
  --it;
  const Allocation& a = it->second;
  return u >= a.user && u - a.user <= a.bytes &&
         (bytes == 0 ? u < a.user + a.bytes : bytes <= a.bytes - (u - a.user));
}

cudaError_t Fail(Device& d, cudaError_t e) {
  d.last_error = e;
  return e;
}

// ---- fibers ----

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;  // kFiberStack bytes above a guard page
  ThreadState ts{};
  enum State { kRunnable, kBlockBarrier, kWarpBarrier, kDone } state = kRunnable;
  int shfl_parity = 0;
};

struct Block {
  std::vector<Fiber> fibers;
  int n = 0;
  const std::function<void()>* body = nullptr;
  const char* kernel = "";
  void* sched_sp = nullptr;
  Fiber* current = nullptr;
  std::vector<uint64_t> slots;  // [warp][parity][lane]
};
Block g_block;

extern "C" void tpserve_emu_switch(void** save_sp, void* to_sp);

#if defined(__x86_64__)
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save_sp, and resumes the context whose stack pointer is to_sp.
asm(R"(
  .text
  .globl tpserve_emu_switch
  .type tpserve_emu_switch, @function
tpserve_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size tpserve_emu_switch, .-tpserve_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

void SwitchToScheduler(Fiber* f) { tpserve_emu_switch(&f->sp, g_block.sched_sp); }

[[noreturn]] void FiberEntry() {
  Fiber* f = g_block.current;
  (*g_block.body)();
  f->state = Fiber::kDone;
  SwitchToScheduler(f);
  __builtin_unreachable();
}

void* InitialStack(char* stack) {
  auto* top = reinterpret_cast<uint64_t*>(stack + kFiberStack);  // 16-byte aligned
  top[-1] = 0;                                                   // "return address" of entry
  top[-2] = reinterpret_cast<uint64_t>(&FiberEntry);             // popped by `ret`
  for (int i = 3; i <= 8; ++i) top[-i] = 0;                      // rbp rbx r12..r15
  uint32_t csr[2] = {0x1F80u, 0x037Fu};                          // MXCSR, x87 control word
  std::memcpy(&top[-9], csr, sizeof(csr));
  return &top[-9];
}

std::vector<char*>& StackPool() {
  static std::vector<char*> pool;
  return pool;
}

char* StackFor(int i) {
  auto& pool = StackPool();
  while (static_cast<int>(pool.size()) <= i) {
    void* m = mmap(nullptr, kFiberStack + kPage, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) Fatal("cannot map a fiber stack");
    mprotect(m, kPage, PROT_NONE);  // guard: a kernel thread's stack overflow faults
    pool.push_back(static_cast<char*>(m) + kPage);
  }
  return pool[i];
}

std::string Describe(const Block& b) {
  std::string s;
  for (int i = 0; i < b.n && s.size() < 600; ++i) {
    const Fiber& f = b.fibers[i];
    static const char* kNames[] = {"running", "__syncthreads", "shuffle", "exited"};
    if (i == 0 || f.state != b.fibers[i - 1].state) {
      s += " thread " + std::to_string(i) + ": " + kNames[f.state] + ";";
    }
  }
  return s;
}

// A GPU runs a block's threads in no particular order: a kernel that is right gives the same
// results with the threads run last-to-first (TPSERVE_CUDA_EMU_ORDER=reverse) as first-to-last.
bool& ReverseOrderFlag() {
  static bool reverse = [] {
    const char* order = std::getenv("TPSERVE_CUDA_EMU_ORDER");
    return order != nullptr && std::string(order) == "reverse";
  }();
  return reverse;
}
bool ReverseOrder() { return ReverseOrderFlag(); }

void RunBlock(int n) {
  Block& b = g_block;
  b.n = n;
  if (static_cast<int>(b.fibers.size()) < n) b.fibers.resize(n);
  const int warps = (n + 31) / 32;
  b.slots.assign(static_cast<size_t>(warps) * 64, 0);
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.stack = StackFor(i);
    f.state = Fiber::kRunnable;
    f.shfl_parity = 0;
    f.ts.linear = static_cast<unsigned>(i);
    const unsigned bx = g_block_dim.x, by = g_block_dim.y;
    f.ts.idx = uint3{i % bx, (i / bx) % by, i / (bx * by)};
#if defined(__x86_64__)
    f.sp = InitialStack(f.stack);
#endif
  }
  for (;;) {
    bool ran = false;
    for (int k = 0; k < n; ++k) {
      Fiber& f = b.fibers[ReverseOrder() ? n - 1 - k : k];
      if (f.state != Fiber::kRunnable) continue;
      ran = true;
      b.current = &f;
      g_thread = &f.ts;
      tpserve_emu_switch(&b.sched_sp, f.sp);
    }
    g_thread = nullptr;
    int live = 0, at_block = 0;
    for (int i = 0; i < n; ++i) {
      live += b.fibers[i].state != Fiber::kDone;
      at_block += b.fibers[i].state == Fiber::kBlockBarrier;
    }
    if (live == 0) return;
    bool released = false;
    if (at_block == live && live < n) {
      Fatal(
          "kernel %s: block (%u,%u,%u): __syncthreads() reached by %d threads after %d exited "
          "(undefined on a GPU: the barrier expects the whole block)",
          b.kernel, g_block_idx.x, g_block_idx.y, g_block_idx.z, live, n - live);
    }
    if (at_block == live) {
      for (int i = 0; i < n; ++i) {
        if (b.fibers[i].state == Fiber::kBlockBarrier) b.fibers[i].state = Fiber::kRunnable;
      }
      released = true;
    } else {
      for (int w = 0; w < warps; ++w) {
        int lanes = 0, waiting = 0, exited = 0;
        for (int i = w * 32; i < std::min(n, w * 32 + 32); ++i) {
          ++lanes;
          waiting += b.fibers[i].state == Fiber::kWarpBarrier;
          exited += b.fibers[i].state == Fiber::kDone;
        }
        if (waiting == 0) continue;
        if (waiting + exited == lanes && exited > 0) {
          Fatal(
              "kernel %s: a full-warp shuffle in warp %d while %d of its lanes have exited "
              "(undefined on a GPU)",
              b.kernel, w, exited);
        }
        if (waiting == lanes) {
          for (int i = w * 32; i < w * 32 + lanes; ++i) b.fibers[i].state = Fiber::kRunnable;
          released = true;
        }
      }
    }
    if (!ran && !released) {
      Fatal(
          "kernel %s: block (%u,%u,%u) can never leave its barriers (a divergent "
          "__syncthreads or shuffle; on a GPU: a hang or undefined behaviour):%s",
          b.kernel, g_block_idx.x, g_block_idx.y, g_block_idx.z, Describe(b).c_str());
    }
  }
}

void RunGrid(const char* name, dim3 grid, dim3 block, size_t smem,
             const std::function<void()>& body) {
  g_block.body = &body;
  g_block.kernel = name;
  g_grid_dim = grid;
  g_block_dim = block;
  // 128-byte aligned, as TPSERVE_DYNAMIC_SHARED declares it (WMMA tiles need 32 bytes).
  std::vector<unsigned char> shared(std::max<size_t>(smem, 16) + 128);
  g_dynamic_shared =
      reinterpret_cast<void*>(RoundUp(reinterpret_cast<uintptr_t>(shared.data()), 128));
  const int n = static_cast<int>(block.x * block.y * block.z);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        // Shared memory starts as garbage on a GPU: NaN bytes make an unstaged read show.
        std::memset(g_dynamic_shared, 0xff, smem);
        if (__start_tpserve_shared != nullptr) {
          std::memset(__start_tpserve_shared, 0xff,
                      static_cast<size_t>(__stop_tpserve_shared - __start_tpserve_shared));
        }
        g_block_idx = uint3{x, y, z};
        RunBlock(n);
      }
    }
  }
  g_dynamic_shared = nullptr;
}

}  // namespace

void SetReverseThreadOrder(bool reverse) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  ReverseOrderFlag() = reverse;
}

// ---- kernel-side entry points ----

void SyncThreads() {
  Fiber* f = g_block.current;
  f->state = Fiber::kBlockBarrier;
  SwitchToScheduler(f);
  g_thread = &f->ts;
}

uint64_t ShuffleBits(unsigned mask, uint64_t bits, int src) {
  Fiber* f = g_block.current;
  const int lane = static_cast<int>(f->ts.linear % 32), warp = static_cast<int>(f->ts.linear / 32);
  if (mask != 0xffffffffu)
    Fatal("kernel %s: the emulator supports full-warp shuffles only", g_block.kernel);
  if ((warp + 1) * 32 > g_block.n) {
    Fatal("kernel %s: a full-warp shuffle in a partial warp (block of %d threads)", g_block.kernel,
          g_block.n);
  }
  uint64_t* slots = &g_block.slots[static_cast<size_t>(warp) * 64];
  const int parity = f->shfl_parity;
  slots[parity * 32 + lane] = bits;
  f->state = Fiber::kWarpBarrier;
  SwitchToScheduler(f);
  g_thread = &f->ts;
  f->shfl_parity ^= 1;
  return slots[parity * 32 + src];
}

void LaunchKernel(const char* name, const void* func, dim3 grid, dim3 block, size_t smem,
                  cudaStream_t stream, std::function<void()> body) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    std::fprintf(stderr,
                 "cuda emulator: kernel %s: invalid configuration grid (%u,%u,%u) "
                 "block (%u,%u,%u)\n",
                 name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
    Fail(d, cudaErrorInvalidConfiguration);
    return;
  }
  size_t allowed = kDefaultSmem;
  if (auto it = d.smem_optin.find(func); it != d.smem_optin.end()) allowed = it->second;
  if (smem > allowed) {
    std::fprintf(stderr,
                 "cuda emulator: kernel %s: %zu bytes of dynamic shared memory, %zu "
                 "allowed (cudaFuncSetAttribute raises it up to %zu)\n",
                 name, smem, allowed, kMaxSmemOptin);
    Fail(d, cudaErrorInvalidValue);
    return;
  }
  Push(d, stream, std::function<void()>([name, grid, block, smem, body = std::move(body)]() {
         RunGrid(name, grid, block, smem, body);
       }));
  ++d.counters.kernels;
}

// ---- host-side helpers ----

void Enqueue(cudaStream_t stream, std::function<void()> op) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  Push(d, stream, std::move(op));
}

void EnqueueWaiting(cudaStream_t stream, std::function<bool()> op) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  Push(d, stream, std::move(op));
}

Counters GetCounters() {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  return d.counters;
}

void ResetCounters() {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  d.counters = Counters{};
}

void Flush() {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  FlushLocked(d, lock);
}

bool IsDevice(const void* p, size_t bytes) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  return IsDeviceLocked(d, p, bytes);
}

void SetLastError(cudaError_t error) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  d.last_error = error;
}

void Fatal(const char* fmt, ...) {
  std::fprintf(stderr, "cuda emulator: ");
  va_list args;
  va_start(args, fmt);
  std::vfprintf(stderr, fmt, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::abort();
}

}  // namespace tpserve_emu

using tpserve_emu::Dev;
using tpserve_emu::Device;

namespace {

cudaError_t Check(Device& d) {
  if (d.device_count <= 0) return tpserve_emu::Fail(d, cudaErrorNoDevice);
  return cudaSuccess;
}

// Where a copy's pointers point, against what `kind` says.
cudaError_t CheckCopy(Device& d, void* dst, const void* src, size_t count, cudaMemcpyKind& kind) {
  const bool dst_dev = tpserve_emu::IsDeviceLocked(d, dst, count);
  const bool src_dev = tpserve_emu::IsDeviceLocked(d, src, count);
  if (kind == cudaMemcpyDefault) {
    kind = dst_dev ? (src_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                   : (src_dev ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  }
  const bool want_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool want_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (count > 0 && (dst_dev != want_dst || src_dev != want_src)) {
    std::fprintf(stderr,
                 "cuda emulator: cudaMemcpy kind %d of %zu bytes: dst %p is %s, src %p "
                 "is %s\n",
                 static_cast<int>(kind), count, dst,
                 dst_dev ? "device memory" : "not (all) device memory", src,
                 src_dev ? "device memory" : "not (all) device memory");
    return tpserve_emu::Fail(d, cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

// Enqueues a copy. A pageable host source is read now (CUDA stages it before returning); a
// pageable host destination makes the call synchronous (CUDA returns once it is written).
cudaError_t Copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream,
                 bool blocking) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (cudaError_t e = Check(d); e != cudaSuccess) return e;
  if (cudaError_t e = CheckCopy(d, dst, src, count, kind); e != cudaSuccess) return e;
  if (count == 0) return cudaSuccess;
  const bool src_pinned = tpserve_emu::IsPinnedLocked(d, src, count);
  const bool dst_pinned = tpserve_emu::IsPinnedLocked(d, dst, count);
  const bool pageable = (kind == cudaMemcpyHostToDevice && !src_pinned) ||
                        (kind == cudaMemcpyDeviceToHost && !dst_pinned);
  if ((blocking || pageable) && tpserve_emu::RefusedByCapture(d, stream)) {
    return cudaErrorStreamCaptureUnsupported;
  }
  if (kind == cudaMemcpyHostToDevice)
    ++(src_pinned ? d.counters.h2d_pinned : d.counters.h2d_pageable);
  if (kind == cudaMemcpyDeviceToHost) ++d.counters.d2h;
  if (kind == cudaMemcpyHostToDevice && !src_pinned) {
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src),
                                                      static_cast<const char*>(src) + count);
    Push(d, stream, std::function<void()>([dst, staged]() {
           std::memcpy(dst, staged->data(), staged->size());
         }));
  } else {
    Push(d, stream, std::function<void()>([dst, src, count]() { std::memmove(dst, src, count); }));
  }
  if (blocking || (kind == cudaMemcpyDeviceToHost && !dst_pinned)) {
    ++d.counters.host_waits;
    tpserve_emu::FlushStream(d, lock, stream);
  }
  return cudaSuccess;
}

cudaError_t Set(void* ptr, int value, size_t count, cudaStream_t stream, bool blocking) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (cudaError_t e = Check(d); e != cudaSuccess) return e;
  if (count > 0 && !tpserve_emu::IsDeviceLocked(d, ptr, count)) {
    std::fprintf(stderr, "cuda emulator: cudaMemset of %zu bytes at %p: not device memory\n", count,
                 ptr);
    return tpserve_emu::Fail(d, cudaErrorInvalidValue);
  }
  if (blocking && tpserve_emu::RefusedByCapture(d, stream))
    return cudaErrorStreamCaptureUnsupported;
  Push(d, stream, std::function<void()>([ptr, value, count]() { std::memset(ptr, value, count); }));
  if (blocking) {
    ++d.counters.host_waits;
    tpserve_emu::FlushStream(d, lock, stream);
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  *count = std::max(d.device_count, 0);
  return Check(d);
}

cudaError_t cudaSetDevice(int device) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (cudaError_t e = Check(d); e != cudaSuccess) return e;
  if (device < 0 || device >= d.device_count) return tpserve_emu::Fail(d, cudaErrorInvalidDevice);
  tpserve_emu::t_current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  *device = tpserve_emu::t_current_device;
  return Check(d);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (cudaError_t e = Check(d); e != cudaSuccess) return e;
  if (device < 0 || device >= d.device_count) return tpserve_emu::Fail(d, cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof(prop->name), "tpserve CUDA emulator (sm_90 limits)");
  prop->totalGlobalMem = d.capacity;
  prop->sharedMemPerBlock = tpserve_emu::kDefaultSmem;
  prop->sharedMemPerBlockOptin = tpserve_emu::kMaxSmemOptin;
  prop->maxThreadsPerBlock = tpserve_emu::kMaxThreads;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->multiProcessorCount = 132;
  prop->major = 9;
  prop->minor = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (cudaError_t e = Check(d); e != cudaSuccess) return e;
  if (tpserve_emu::RefusedByAnyCapture(d)) return cudaErrorStreamCaptureUnsupported;
  ++d.counters.host_waits;
  tpserve_emu::FlushLocked(d, lock);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (cudaError_t e = Check(d); e != cudaSuccess) return e;
  *total = d.capacity;
  *free = d.capacity - d.in_use;
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  const cudaError_t e = d.last_error;
  d.last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  return d.last_error;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError:
      return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection:
      return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInsufficientDriver:
      return "cudaErrorInsufficientDriver";
    case cudaErrorInvalidDeviceFunction:
      return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    case cudaErrorIllegalAddress:
      return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources:
      return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    case cudaErrorInvalidPitchValue:
      return "cudaErrorInvalidPitchValue";
    case cudaErrorNotSupported:
      return "cudaErrorNotSupported";
    case cudaErrorIllegalState:
      return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported:
      return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated:
      return "cudaErrorStreamCaptureInvalidated";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInsufficientDriver:
      return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorNotReady:
      return "device not ready";
    default:
      return cudaGetErrorName(error);
  }
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  *ptr = nullptr;
  if (cudaError_t e = Check(d); e != cudaSuccess) return e;
  const size_t bytes = tpserve_emu::RoundUp(std::max<size_t>(size, 1), 256);
  // Each flush changes the protection of every region twice: regions are whole 2 MiB pages (the
  // arena asks for transparent huge pages), so that costs one page-table entry per 2 MiB, and
  // small allocations share slabs, so that the number of regions stays small.
  constexpr size_t kHuge = tpserve_emu::kHugePage;
  const bool small = bytes < kHuge / 2;
  uintptr_t region = 0, user = 0;
  if (small && d.open_slab != 0 &&
      d.regions[d.open_slab].bytes - d.regions[d.open_slab].used >= bytes) {
    region = d.open_slab;
  } else {
    const size_t region_bytes = small ? kHuge : tpserve_emu::RoundUp(bytes, kHuge);
    const size_t start = tpserve_emu::RoundUp(d.bump, kHuge);
    if (d.in_use + region_bytes > d.capacity ||
        start + region_bytes + tpserve_emu::kPage > tpserve_emu::kArenaBytes) {
      return tpserve_emu::Fail(d, cudaErrorMemoryAllocation);
    }
    region = reinterpret_cast<uintptr_t>(d.arena + start);
    d.bump = start + region_bytes + tpserve_emu::kPage;  // + the guard page
    d.regions[region] = tpserve_emu::Region{region_bytes, 0, 0, small};
    d.in_use += region_bytes;
    if (d.flushing) {
      mprotect(reinterpret_cast<void*>(region), region_bytes, PROT_READ | PROT_WRITE);
    }
    if (small) d.open_slab = region;
  }
  tpserve_emu::Region& r = d.regions[region];
  if (r.slab) {
    user = region + r.used;
    r.used += bytes;
  } else {
    user = region + r.bytes - bytes;  // ends at the guard page: running past it faults
  }
  ++r.live;
  d.live[user] = tpserve_emu::Allocation{region, user, size};
  *ptr = reinterpret_cast<void*>(user);
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  auto it = d.live.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == d.live.end()) {
    std::fprintf(stderr, "cuda emulator: cudaFree(%p): not a live device allocation\n", ptr);
    return tpserve_emu::Fail(d, cudaErrorInvalidValue);
  }
  if (tpserve_emu::RefusedByAnyCapture(d)) return cudaErrorStreamCaptureUnsupported;
  ++d.counters.host_waits;
  tpserve_emu::FlushLocked(d, lock);  // cudaFree waits for the device
  const tpserve_emu::Allocation a = it->second;
  d.live.erase(it);
  auto r = d.regions.find(a.region);
  if (--r->second.live == 0 && a.region != d.open_slab) {
    // Freed regions stay inaccessible for good: a later use of the pointer faults. (Inside a
    // slab that still holds live allocations, a stale pointer is caught only by IsDevice.)
    madvise(reinterpret_cast<void*>(a.region), r->second.bytes, MADV_DONTNEED);
    d.in_use -= r->second.bytes;
    d.regions.erase(r);
  }
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  *ptr = std::aligned_alloc(4096, tpserve_emu::RoundUp(std::max<size_t>(size, 1), 4096));
  if (*ptr == nullptr) return tpserve_emu::Fail(d, cudaErrorMemoryAllocation);
  d.pinned[reinterpret_cast<uintptr_t>(*ptr)] = std::max<size_t>(size, 1);
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (tpserve_emu::RefusedByAnyCapture(d)) return cudaErrorStreamCaptureUnsupported;
  ++d.counters.host_waits;
  tpserve_emu::FlushLocked(d, lock);
  d.pinned.erase(reinterpret_cast<uintptr_t>(ptr));
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes, const void* ptr) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  *attributes = cudaPointerAttributes{};
  if (tpserve_emu::IsDeviceLocked(d, ptr, 0)) {
    attributes->type = cudaMemoryTypeDevice;
    attributes->device = tpserve_emu::t_current_device;
    attributes->devicePointer = const_cast<void*>(ptr);
  } else if (tpserve_emu::IsPinnedLocked(d, ptr, 0)) {
    attributes->type = cudaMemoryTypeHost;
    attributes->hostPointer = const_cast<void*>(ptr);
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind kind,
                              cudaStream_t stream) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (cudaError_t e = Check(d); e != cudaSuccess) return e;
  if (width > dpitch || width > spitch) return tpserve_emu::Fail(d, cudaErrorInvalidPitchValue);
  if (width == 0 || height == 0) return cudaSuccess;
  const size_t dst_span = dpitch * (height - 1) + width, src_span = spitch * (height - 1) + width;
  cudaMemcpyKind k = kind;
  if (cudaError_t e = CheckCopy(d, dst, src, 0, k); e != cudaSuccess) return e;
  const bool dst_dev = tpserve_emu::IsDeviceLocked(d, dst, dst_span);
  const bool src_dev = tpserve_emu::IsDeviceLocked(d, src, src_span);
  if ((kind != cudaMemcpyDeviceToDevice && kind != cudaMemcpyDefault) || !dst_dev || !src_dev) {
    std::fprintf(stderr,
                 "cuda emulator: cudaMemcpy2DAsync kind %d, %zu rows of %zu bytes: dst %p is %s, "
                 "src %p is %s (the emulator copies device to device only)\n",
                 static_cast<int>(kind), height, width, dst,
                 dst_dev ? "device memory" : "not (all) device memory", src,
                 src_dev ? "device memory" : "not (all) device memory");
    return tpserve_emu::Fail(d, dst_dev && src_dev ? cudaErrorNotSupported : cudaErrorInvalidValue);
  }
  tpserve_emu::Push(d, stream, std::function<void()>([=]() {
                      for (size_t r = 0; r < height; ++r) {
                        std::memmove(static_cast<char*>(dst) + r * dpitch,
                                     static_cast<const char*>(src) + r * spitch, width);
                      }
                    }));
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  return Copy(dst, src, count, kind, nullptr, true);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  return Copy(dst, src, count, kind, stream, false);
}
cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  return Set(ptr, value, count, nullptr, true);
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  return Set(ptr, value, count, stream, false);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (cudaError_t e = Check(d); e != cudaSuccess) return e;
  *stream = new CUstream_st{flags};
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (tpserve_emu::RefusedByCapture(d, stream)) return cudaErrorStreamCaptureUnsupported;
  ++d.counters.host_waits;
  tpserve_emu::FlushStream(d, lock, stream);  // CUDA finishes a destroyed stream's work first
  d.queues.erase(stream);
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (tpserve_emu::RefusedByCapture(d, stream)) return cudaErrorStreamCaptureUnsupported;
  ++d.counters.host_waits;
  tpserve_emu::FlushStream(d, lock, stream);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, 0); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  *event = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  // Allowed by CUDA (an event-record node), but nothing here needs it: refused, to be strict.
  if (tpserve_emu::RefusedByCapture(d, stream)) return cudaErrorStreamCaptureUnsupported;
  event->recorded = true;
  event->polled = false;
  event->done = std::make_shared<bool>(false);
  tpserve_emu::Push(d, stream, std::function<void()>([done = event->done]() { *done = true; }));
  return cudaSuccess;
}
// Nothing runs in the background: a query runs what can run now, then answers.
cudaError_t cudaEventQuery(cudaEvent_t event) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  // Asked about work that is still queued: on a GPU the host polls until the device gets there,
  // i.e. it waits (counted once per recording, however often it polls).
  if (event->recorded && !*event->done && !event->polled) {
    event->polled = true;
    ++d.counters.host_waits;
  }
  tpserve_emu::FlushOnce(d);
  return !event->recorded || *event->done ? cudaSuccess : cudaErrorNotReady;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  ++d.counters.host_waits;
  tpserve_emu::FlushUntil(d, lock, [event] { return !event->recorded || *event->done; });
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
  *ms = 0.0f;  // no device clock to read
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > tpserve_emu::kMaxSmemOptin) {
      return tpserve_emu::Fail(d, cudaErrorInvalidValue);
    }
    d.smem_optin[func] = static_cast<size_t>(value);
  }
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (stream == nullptr) return tpserve_emu::Fail(d, cudaErrorStreamCaptureUnsupported);
  if (d.captures.count(stream) != 0) return tpserve_emu::Fail(d, cudaErrorIllegalState);
  d.captures[stream] = Device::Capture{};
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  *graph = nullptr;
  auto it = d.captures.find(stream);
  if (it == d.captures.end()) return tpserve_emu::Fail(d, cudaErrorIllegalState);
  Device::Capture c = std::move(it->second);
  d.captures.erase(it);
  if (c.invalidated) return tpserve_emu::Fail(d, cudaErrorStreamCaptureInvalidated);
  *graph = new CUgraph_st{std::move(c.ops)};
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  auto it = d.captures.find(stream);
  *status = it == d.captures.end()   ? cudaStreamCaptureStatusNone
            : it->second.invalidated ? cudaStreamCaptureStatusInvalidated
                                     : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* num_nodes) {
  if (graph == nullptr || num_nodes == nullptr || nodes != nullptr) {
    return cudaErrorInvalidValue;  // only the count is emulated
  }
  *num_nodes = graph->ops.size();
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (graph == nullptr) return cudaErrorInvalidValue;
  *exec = new CUgraphExec_st{graph->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  Device& d = Dev();
  std::unique_lock<std::mutex> lock(d.mu);
  if (exec == nullptr) return tpserve_emu::Fail(d, cudaErrorInvalidValue);
  if (d.captures.count(stream) != 0) return tpserve_emu::Fail(d, cudaErrorStreamCaptureUnsupported);
  ++d.counters.graph_launches;
  ++d.counters.operations;
  d.counters.graph_operations += exec->ops.size();
  for (const std::function<bool()>& op : exec->ops) tpserve_emu::PushUncounted(d, stream, op);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}
