// CUDA emulator (tests only): the subset of <mma.h> (warp matrix multiply-accumulate, "WMMA") the
// backend uses: 16x16x16 tiles, fp16 inputs, fp32 accumulators.
//
// A fragment's elements are spread over the warp's lanes as on a GPU (8 of the 256 per lane here;
// CUDA leaves the mapping unspecified, so a kernel that indexes `x[]` by position is wrong on
// both). Loads and stores move only the calling lane's elements; mma_sync is a warp collective:
// each lane publishes its three input fragments to a per-warp scratch, waits for the whole warp
// (a warp barrier: a lane that does not come makes the kernel fail with the emulator's divergence
// diagnostic, as a divergent mma_sync is undefined on a GPU), computes its 8 outputs in fp32
// (products of fp16 values are exact in fp32; the sum runs in k order) and waits again before
// the scratch is reused. The documented preconditions are checked: `mptr` 256-bit aligned and
// `ldm` a multiple of 8 halves or 4 floats (16 bytes).
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace emu {
inline constexpr int kElems = 8;  // of the 256, per lane
inline int Lane() { return static_cast<int>(::tpserve_emu::g_thread->linear % 32); }
inline int Warp() { return static_cast<int>(::tpserve_emu::g_thread->linear / 32); }
inline void WarpBarrier() { (void)::tpserve_emu::ShuffleBits(0xffffffffu, 0, Lane()); }
inline void CheckPointer(const void* p, unsigned ldm, unsigned elem_bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    ::tpserve_emu::Fatal("%s: pointer %p is not 256-bit aligned", what, p);
  }
  if ((ldm * elem_bytes) % 16 != 0) {
    ::tpserve_emu::Fatal("%s: ldm %u is not a multiple of 16 bytes", what, ldm);
  }
}
inline float ToFloat(__half h) { return __half2float(h); }
inline float ToFloat(float f) { return f; }
// One warp's published fragments (A, B, C as 16x16 row-major): blocks run one at a time on a
// host thread, and devices may run kernels on several.
inline thread_local float t_scratch[32][3][256];
}  // namespace emu

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator has 16x16x16 fragments only");
  using element_type = T;
  static constexpr int num_elements = emu::kElems;
  T x[emu::kElems];
};

// Element i of lane l is the matrix's element e = 8 l + i: row e / 16, column e % 16 of the
// fragment's tile (A: M x K, B: K x N, accumulator: M x N).
template <class Use, class T, class Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, T v) {
  for (int i = 0; i < emu::kElems; ++i) f.x[i] = v;
}

template <class Use, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __half, Layout>& f, const __half* p,
                             unsigned ldm) {
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>);
  emu::CheckPointer(p, ldm, 2, "wmma::load_matrix_sync");
  const int lane = emu::Lane();
  for (int i = 0; i < emu::kElems; ++i) {
    const int e = lane * emu::kElems + i, r = e / 16, c = e % 16;
    f.x[i] = std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r];
  }
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
  emu::CheckPointer(p, ldm, 4, "wmma::load_matrix_sync");
  const int lane = emu::Lane();
  for (int i = 0; i < emu::kElems; ++i) {
    const int e = lane * emu::kElems + i, r = e / 16, c = e % 16;
    f.x[i] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  emu::CheckPointer(p, ldm, 4, "wmma::store_matrix_sync");
  const int lane = emu::Lane();
  for (int i = 0; i < emu::kElems; ++i) {
    const int e = lane * emu::kElems + i, r = e / 16, c = e % 16;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[i];
  }
}

// d = a b + c (d may be c).
template <class LayoutA, class LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __half, LayoutA>& a,
                     const fragment<matrix_b, 16, 16, 16, __half, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  const int lane = emu::Lane();
  float(&s)[3][256] = emu::t_scratch[emu::Warp()];
  for (int i = 0; i < emu::kElems; ++i) {
    const int e = lane * emu::kElems + i;
    s[0][e] = emu::ToFloat(a.x[i]);
    s[1][e] = emu::ToFloat(b.x[i]);
    s[2][e] = c.x[i];
  }
  emu::WarpBarrier();
  float out[emu::kElems];
  for (int i = 0; i < emu::kElems; ++i) {
    const int e = lane * emu::kElems + i, r = e / 16, col = e % 16;
    float acc = s[2][e];
    for (int k = 0; k < 16; ++k) acc += s[0][r * 16 + k] * s[1][k * 16 + col];
    out[i] = acc;
  }
  emu::WarpBarrier();  // every lane has read the scratch before any lane's next mma writes it
  for (int i = 0; i < emu::kElems; ++i) d.x[i] = out[i];
}

}  // namespace nvcuda::wmma
