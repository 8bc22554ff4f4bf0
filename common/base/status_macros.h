// Propagation helpers for absl::Status / absl::StatusOr across module edges.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TPSERVE_CONCAT_INNER_(a, b) a##b
#define TPSERVE_CONCAT_(a, b) TPSERVE_CONCAT_INNER_(a, b)

// RETURN_IF_ERROR(expr): returns the status of `expr` from the enclosing function when it is not
// OK.
#define RETURN_IF_ERROR(expr)                     \
  do {                                            \
    if (auto _st = (expr); !_st.ok()) return _st; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): `lhs = *expr` when `expr` (a StatusOr) is OK, else returns its
// status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(TPSERVE_CONCAT_(_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(*tmp)
