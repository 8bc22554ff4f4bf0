// Calls a kernel templated on a small count with a run-time count: the register-blocked CPU
// kernels keep one accumulator per activation row, so the row count must be a constant.
#pragma once

#include <type_traits>
#include <utility>

namespace tpserve {

// fn(std::integral_constant<int, n>{}) for 1 <= n <= kMax; returns false when n is outside.
template <int kMax, class Fn>
bool WithStaticCount(int n, Fn&& fn) {
  return [&]<int... I>(std::integer_sequence<int, I...>) {
    return ((n == I + 1 ? (fn(std::integral_constant<int, I + 1>{}), true) : false) || ...);
  }
  (std::make_integer_sequence<int, kMax>{});
}

}  // namespace tpserve
