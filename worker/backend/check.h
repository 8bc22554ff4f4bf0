// CHECK for broken invariants inside the engine (never for user input, which gets an
// absl::Status). abseil 20220623 has no logging, so this is a small stand-in.
#pragma once

#include <cstdio>
#include <cstdlib>

#define TPSERVE_CHECK(cond, ...)                                                    \
  do {                                                                              \
    if (!(cond)) [[unlikely]] {                                                     \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, "" __VA_ARGS__);                                         \
      std::fprintf(stderr, "\n");                                                   \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)
