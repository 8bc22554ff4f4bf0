// A Communicator that forwards to another and adds up the wall time spent inside collectives
// (waiting for peers included), so a step's timing can say how much of it was the data plane
// (worker.proto StepTiming.collective_us). Single-threaded like every Communicator.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include "worker/parallel/communicator.h"

namespace tpserve {

class TimedCommunicator final : public Communicator {
 public:
  explicit TimedCommunicator(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {}

  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }

  absl::Status AllReduceSum(float* data, size_t count) override {
    return Timed([&] { return inner_->AllReduceSum(data, count); });
  }
  absl::Status GatherV(const float* in, std::span<const size_t> counts, float* out,
                       int root) override {
    return Timed([&] { return inner_->GatherV(in, counts, out, root); });
  }
  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    return Timed([&] { return inner_->Broadcast(data, bytes, root); });
  }
  absl::Status Barrier() override {
    return Timed([&] { return inner_->Barrier(); });
  }
  // Not timed: on a GPU it is the wait for the whole step's device work, not the data plane.
  absl::Status WaitPending() override { return inner_->WaitPending(); }
  bool records_in_graphs() const override { return inner_->records_in_graphs(); }

  // Microseconds inside collectives since the last call, and resets the count.
  int64_t TakeMicros() {
    const int64_t us = micros_;
    micros_ = 0;
    return us;
  }

 private:
  template <typename Fn>
  absl::Status Timed(Fn&& fn) {
    const auto start = std::chrono::steady_clock::now();
    absl::Status st = fn();
    micros_ += std::chrono::duration_cast<std::chrono::microseconds>(
                   std::chrono::steady_clock::now() - start)
                   .count();
    return st;
  }

  std::unique_ptr<Communicator> inner_;
  int64_t micros_ = 0;
};

}  // namespace tpserve
