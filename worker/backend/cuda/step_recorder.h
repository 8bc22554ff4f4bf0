// Recorded steps: a forward pass captured once as a CUDA graph and replayed at every later step
// of the same shape, so that a decode step costs the host one graph launch instead of hundreds of
// kernel launches and cuBLAS calls (a SmolLM2 decode step is ~550 of them; a small model's step
// is bound by launching, not by the GPU).
//
// A graph replays fixed kernel arguments: the same device addresses, sizes and scalars. What
// changes from step to step are host arrays (token ids, positions, KV slots, block tables), and
// those reach the kernels only through the backend's uploads. So a recording keeps, besides the
// graph, the tape of what the step did on the host side of the backend, in order:
//
//   - each device allocation (size; the graph's own memory, a DevicePool of its own);
//   - each upload (into a fixed place of the recording's upload arena, with room to grow to
//     the next power of two; an upload with the same bytes as an earlier one of the step shares
//     its place, as the backend's upload reuse does for the per-layer block tables);
//   - each kernel launch, cuBLAS call, memset and 2-D copy, as bytes: kernel, dimensions, and
//     every argument.
//
// A replay runs the step's host code again (the model's Forward and the backend ops), but the
// backend makes no device call: allocations return the recorded addresses, uploads are written
// into the arena's host side, and every launch is compared with the tape. When everything
// matched, the arena is copied to the device in one copy and the graph launched. Any difference
// (a different kernel, size, scalar or pointer; an upload that outgrew its place) abandons the
// replay before anything ran on the device: the caller records the step again. A replay
// therefore cannot run a stale graph for a step whose launches differ.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "worker/backend/cuda/cuda_launch.h"
#include "worker/backend/cuda/device_pool.h"

namespace tpserve::cuda {

// One key's graph and tape (the backend keeps them per key).
struct StepRecording {
  struct Entry {
    enum Kind : uint8_t { kCall, kAlloc, kUpload } kind = kCall;
    std::vector<uint8_t> call;  // kCall: what the launch / library call was, as bytes
    size_t bytes = 0;           // kAlloc: size; kUpload: capacity (bytes it may grow to)
    size_t offset = 0;          // kUpload: place in the arena
    int same_as = -1;           // kUpload: the earlier upload of the step it shares
    void* ptr = nullptr;        // kAlloc: the address
  };

  StepRecording() = default;
  ~StepRecording();
  StepRecording(const StepRecording&) = delete;
  StepRecording& operator=(const StepRecording&) = delete;

  // Drops the graph, the tape and the memory (not while a capture is open).
  void Reset();

  std::vector<Entry> tape;
  std::unique_ptr<DevicePool> pool;  // the graph's activations and its arena
  std::shared_ptr<void> arena;       // device side of the uploads
  size_t arena_capacity = 0;         // bytes; the next capture's size when it was outgrown
  size_t arena_used = 0;
  std::vector<uint8_t> host_arena;  // host side, written by each replay
  cudaGraphExec_t exec = nullptr;
  size_t nodes = 0;       // in the graph
  uint64_t last_use = 0;  // for evicting the least recently used
  uint64_t replays = 0;
  uint64_t replays_since_capture = 0;
  int captures = 0;           // how often this key was (re)captured
  int captures_in_a_row = 0;  // with fewer than kStableReplays replays after each
  bool disabled = false;
};

// Observes one step being captured into `rec` or replayed from it (the backend sets it as the
// thread's launch observer and routes its allocations and uploads through it).
class StepRecorder final : public LaunchObserver {
 public:
  enum class Mode { kCapture, kReplay };
  StepRecorder(std::shared_ptr<StepRecording> rec, Mode mode, cudaStream_t stream);
  StepRecorder(const StepRecorder&) = delete;
  StepRecorder& operator=(const StepRecorder&) = delete;

  Mode mode() const { return mode_; }
  // Whether the device call described by `kernel` / `args` is made (capture: yes, recorded; replay:
  // no, compared).
  bool OnLaunch(const char* kernel, const dim3& grid, const dim3& block, size_t smem,
                cudaStream_t stream, const void* args, size_t args_bytes) override;
  // A device call other than a kernel (cuBLAS, memset, 2-D copy): its name and argument bytes.
  bool OnCall(const char* what, const void* args, size_t args_bytes);
  // Device memory of `bytes` bytes: the recording's (capture), the recorded address (replay).
  // Null after a failure: the caller falls back to its own pool (nothing will run on it).
  std::shared_ptr<void> Alloc(size_t bytes);
  // The device address `bytes` of `data` will have when the step runs (written to the arena's
  // host side now). Null after a failure.
  const void* Upload(const void* data, size_t bytes);
  // Marks the step as not recordable / not matching (the first reason is kept).
  void Fail(std::string why);

  bool failed() const { return !failure_.empty(); }
  // Capture: the failure was the device's memory (this rank's alone, unlike a step that cannot
  // be recorded, which every rank finds).
  bool out_of_memory() const { return out_of_memory_; }
  const std::string& failure() const { return failure_; }
  // Replay: whether the whole tape was followed (a step that stopped early did not match).
  bool at_end() const { return cursor_ == rec_->tape.size(); }

 private:
  StepRecording::Entry* Next(StepRecording::Entry::Kind kind, const char* what);

  std::shared_ptr<StepRecording> rec_;
  const Mode mode_;
  const cudaStream_t stream_;
  size_t cursor_ = 0;                               // replay: next tape entry
  std::vector<std::pair<size_t, size_t>> uploads_;  // this step's uploads: arena offset, bytes
  std::string failure_;
  bool out_of_memory_ = false;
};

}  // namespace tpserve::cuda
