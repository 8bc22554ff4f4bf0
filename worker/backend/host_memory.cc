#include "worker/backend/host_memory.h"

#include <sys/mman.h>

#include <cstdint>

#include "worker/backend/check.h"

namespace tpserve {

std::shared_ptr<void> HugePageBuffer(size_t bytes) {
  TPSERVE_CHECK(bytes > 0, "HugePageBuffer: 0 bytes");
  // Map one huge page more than asked, keep the 2 MB-aligned part and give back the rest.
  const size_t size = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  const size_t mapped = size + kHugePageBytes;
  void* m = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TPSERVE_CHECK(m != MAP_FAILED, "out of memory mapping %zu bytes", bytes);
  const uintptr_t start = reinterpret_cast<uintptr_t>(m);
  const uintptr_t aligned = (start + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  if (aligned > start) munmap(m, aligned - start);
  const uintptr_t end = start + mapped, used_end = aligned + size;
  if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
  void* p = reinterpret_cast<void*>(aligned);
  // Only a hint: where the kernel has no huge pages (or THP is off) the buffer is 4 KB pages.
  (void)madvise(p, size, MADV_HUGEPAGE);
  return std::shared_ptr<void>(p, [size](void* q) { munmap(q, size); });
}

}  // namespace tpserve
