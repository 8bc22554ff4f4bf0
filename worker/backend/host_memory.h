// Weights in transparent huge pages.
//
// The kernel here runs transparent huge pages in `madvise` mode: without the advice every buffer
// is 4 KB pages, and a decode step that streams ~100 MB of packed weights enters a new page (a
// TLB miss, and a page walk) every 4 KB. A buffer from HugePageBuffer is mapped 2 MB-aligned and
// advised MADV_HUGEPAGE before anything touches it, so its first touch faults in 2 MB pages where
// the kernel has them (4 KB pages otherwise: the advice is a hint). The memory comes zeroed from
// the kernel, page by page on first touch.
//
// The KV pools do not use it: served at 32 streams, KV pools in huge pages were slower than in
// 4 KB pages (bench/engine/README.md, fifth session), weights faster.
#pragma once

#include <cstddef>
#include <memory>

namespace tpserve {

// Buffers from this size on are worth huge pages (one huge page).
inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// A zeroed buffer of `bytes` (> 0), 2 MB-aligned, advised as huge pages; freed (unmapped) with
// the last owner. Fails (TPSERVE_CHECK) when the address space is exhausted.
std::shared_ptr<void> HugePageBuffer(size_t bytes);

}  // namespace tpserve
