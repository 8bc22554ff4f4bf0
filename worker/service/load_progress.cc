#include "worker/service/load_progress.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tpserve {
namespace {

constexpr char kMarker[] = "load progress ";

}  // namespace

LoadProgress::LoadProgress(int64_t total_bytes, Report report, absl::Duration interval)
    : total_(std::max<int64_t>(total_bytes, 1)), report_(std::move(report)), interval_(interval) {}

void LoadProgress::Add(int64_t bytes) {
  // Tied embeddings are read twice (embedding and LM head): never report past the total.
  done_ = std::min(total_, done_ + bytes);
  const absl::Time now = absl::Now();
  const bool step = done_ * 10 >= total_ * next_tenth_;
  if (!step && now - last_ < interval_) return;
  while (next_tenth_ <= 10 && done_ * 10 >= total_ * next_tenth_) ++next_tenth_;
  last_ = now;
  if (done_ < total_) report_(done_, total_);  // the 100 % report is Finish's
}

void LoadProgress::Finish() {
  done_ = total_;
  report_(total_, total_);
}

std::string FormatLoadProgress(int64_t done_bytes, int64_t total_bytes) {
  // Whole percent, rounded down: 99.96 % is not "100%".
  const int64_t pct = total_bytes > 0 ? done_bytes * 100 / total_bytes : 100;
  return absl::StrFormat("%s%d/%d bytes (%d%%, %.1f/%.1f MiB)", kMarker, done_bytes, total_bytes,
                         pct, done_bytes / 1048576.0, total_bytes / 1048576.0);
}

bool ParseLoadProgress(const std::string& line, int64_t* done_bytes, int64_t* total_bytes) {
  const size_t at = line.find(kMarker);
  if (at == std::string::npos) return false;
  long long done = 0, total = 0;
  if (std::sscanf(line.c_str() + at + std::strlen(kMarker), "%lld/%lld bytes", &done, &total) !=
      2) {
    return false;
  }
  *done_bytes = done;
  *total_bytes = total;
  return total > 0;
}

void CountingBackend::Count(const TensorView& view) {
  if (progress_ != nullptr) {
    progress_->Add(static_cast<int64_t>(view.rows) * static_cast<int64_t>(view.row_bytes()));
  }
}

absl::StatusOr<Weight> CountingBackend::LoadWeight(const TensorView& view) {
  absl::StatusOr<Weight> w = inner_.LoadWeight(view);
  Count(view);
  return w;
}

absl::StatusOr<Tensor> CountingBackend::LoadVector(const TensorView& view) {
  absl::StatusOr<Tensor> t = inner_.LoadVector(view);
  Count(view);
  return t;
}

}  // namespace tpserve
