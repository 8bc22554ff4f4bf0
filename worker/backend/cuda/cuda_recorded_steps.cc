// Recorded steps (step_recorder.h): CudaBackend::RunRecorded captures a step into a CUDA graph
// the first time its key comes, and replays the graph afterwards when the step's host side
// matches the recording; anything else runs op by op, as without recording.
#include <cuda_runtime_api.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/backend/check.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/cuda_status.h"

namespace tpserve {
namespace {

constexpr size_t kMaxRecordings = 24;  // graphs kept; the least recently used go first
// A key recorded this many times in a row, each time replayed fewer than kStableReplays times
// before it changed, runs op by op for good: its steps keep changing. A step that changes now and
// then (a long request joins or leaves the batch, the block tables outgrow their room) is
// recorded again every time, however often over a server's life.
constexpr int kMaxCaptures = 8;
constexpr uint64_t kStableReplays = 16;
constexpr size_t kFirstArenaBytes = 64 << 10;  // a decode step's uploads take a few KiB

}  // namespace

// The recorder of the step running on this thread and backend, for the scope.
class RecorderScope {
 public:
  RecorderScope(cuda::StepRecorder*& slot, cuda::StepRecorder* recorder)
      : slot_(slot), previous_observer_(cuda::t_launch_observer) {
    slot_ = recorder;
    cuda::t_launch_observer = recorder;
  }
  ~RecorderScope() {
    slot_ = nullptr;
    cuda::t_launch_observer = previous_observer_;
  }

 private:
  cuda::StepRecorder*& slot_;
  cuda::LaunchObserver* previous_observer_;
};

absl::Status CudaBackend::AloneFails(const std::string& key, const std::string& reason) {
  // NCCL requires a captured collective to be captured on every rank of the launch: running the
  // step op by op here while the peers replay their graphs would pair them wrongly (or hang).
  // The step fails instead; the cluster re-forms the group and every rank records afresh.
  const std::string message = absl::StrCat(
      "recorded step ", key, " failed on this rank: ", reason,
      "; with --tp > 1 over NCCL the ranks record their decode steps together, so the step "
      "fails rather than run op by op on one rank (tpserve-worker --cuda-graph-max-batch: a "
      "smaller one, or 0 to run every step op by op)");
  spdlog::error("{}", message);
  return absl::ResourceExhaustedError(message);
}

bool CudaBackend::Unrecordable(const char* what) {
  if (recorder_ == nullptr) return false;
  recorder_->Fail(absl::StrCat(what, " inside the step"));
  return true;
}

CudaBackend::RecordedStats CudaBackend::recorded_stats() const {
  RecordedStats s = recorded_stats_;
  s.graphs = std::count_if(recordings_.begin(), recordings_.end(),
                           [](const auto& r) { return r.second->exec != nullptr; });
  for (const auto& [key, rec] : recordings_) {
    if (rec->pool != nullptr) s.bytes += static_cast<int64_t>(rec->pool->bytes_held());
  }
  return s;
}

void CudaBackend::EvictRecordings() {
  while (recordings_.size() > kMaxRecordings) {
    auto oldest = std::min_element(
        recordings_.begin(), recordings_.end(),
        [](const auto& a, const auto& b) { return a.second->last_use < b.second->last_use; });
    recordings_.erase(oldest);
  }
}

void CudaBackend::DropRecorded(const std::string& key_prefix) {
  if (recorder_ != nullptr) return;  // not from inside a step (its memory may be in use)
  Bind();
  std::erase_if(recordings_, [&](const auto& r) { return r.first.starts_with(key_prefix); });
}

absl::Status CudaBackend::LaunchRecording(cuda::StepRecording& rec, cudaGraph_t captured) {
  if (captured != nullptr) {
    RETURN_IF_ERROR(
        cuda::CudaStatus(cudaGraphInstantiate(&rec.exec, captured, 0), "cudaGraphInstantiate"));
    RETURN_IF_ERROR(
        cuda::CudaStatus(cudaGraphGetNodes(captured, nullptr, &rec.nodes), "cudaGraphGetNodes"));
  }
  // The step's uploads: one copy through page-locked staging (a chunk at a time).
  const size_t chunk = staging_.chunk_bytes();
  auto* arena = static_cast<uint8_t*>(rec.arena.get());
  for (size_t off = 0; off < rec.arena_used; off += chunk) {
    RETURN_IF_ERROR(
        cuda::CudaStatus(staging_.CopyToDevice(arena + off, rec.host_arena.data() + off,
                                               std::min(chunk, rec.arena_used - off), stream_),
                         "uploading a recorded step's inputs"));
  }
  return cuda::CudaStatus(cudaGraphLaunch(rec.exec, stream_), "cudaGraphLaunch");
}

absl::Status CudaBackend::RunRecorded(const std::string& key, bool with_peers,
                                      const std::function<absl::Status()>& step) {
  if (options_.max_recorded_rows <= 0 || recorder_ != nullptr) return step();
  Bind();
  std::shared_ptr<cuda::StepRecording>& slot = recordings_[key];
  if (slot == nullptr) slot = std::make_shared<cuda::StepRecording>();
  const std::shared_ptr<cuda::StepRecording> rec = slot;
  rec->last_use = ++recording_clock_;
  if (rec->disabled) return step();

  std::string why;
  if (rec->exec != nullptr) {
    cuda::StepRecorder replay(rec, cuda::StepRecorder::Mode::kReplay, stream_);
    absl::Status st;
    {
      RecorderScope scope(recorder_, &replay);
      st = step();
    }
    if (!replay.failed() && replay.at_end()) {
      if (!st.ok()) return st;  // nothing ran on the device
      ++rec->replays;
      ++rec->replays_since_capture;
      ++recorded_stats_.replays;
      return LaunchRecording(*rec, nullptr);
    }
    why = replay.failed() ? replay.failure() : "the step ended before the recording did";
    if (rec->replays_since_capture >= kStableReplays) rec->captures_in_a_row = 0;
    rec->Reset();  // record it again, now
  }
  if (rec->captures_in_a_row >= kMaxCaptures) {
    rec->disabled = true;
    spdlog::warn(
        "recorded step {}: recorded {} times in a row and still changing ({}); runs op by op", key,
        rec->captures_in_a_row, why);
    return step();
  }
  if (!why.empty()) spdlog::debug("recorded step {}: recording again: {}", key, why);
  EvictRecordings();  // frees memory: never while a capture is open

  ++rec->captures;
  ++rec->captures_in_a_row;
  rec->replays_since_capture = 0;
  ++recorded_stats_.captures;
  rec->pool = std::make_unique<cuda::DevicePool>();
  if (rec->arena_capacity == 0) rec->arena_capacity = kFirstArenaBytes;
  absl::StatusOr<std::shared_ptr<void>> arena = rec->pool->Get(rec->arena_capacity);
  if (!arena.ok()) {
    ++recorded_stats_.fallbacks;
    rec->Reset();
    if (with_peers) return AloneFails(key, std::string(arena.status().message()));
    return step();
  }
  rec->arena = *std::move(arena);
  rec->host_arena.assign(rec->arena_capacity, 0);
  rec->arena_used = 0;

  cuda::StepRecorder capture(rec, cuda::StepRecorder::Mode::kCapture, stream_);
  // Relaxed: the recording's own allocations (cudaMalloc, not part of the graph) are allowed
  // while capturing, and other threads of the worker are not restricted.
  TPSERVE_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
  absl::Status st;
  {
    RecorderScope scope(recorder_, &capture);
    st = step();
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
  if (end != cudaSuccess || capture.failed() || !st.ok()) {
    cudaGetLastError();  // the capture's error is not the device's
    if (graph != nullptr) cudaGraphDestroy(graph);
    ++recorded_stats_.fallbacks;
    const std::string reason = capture.failed() ? capture.failure()
                               : !st.ok()       ? std::string(st.message())
                                                : cudaGetErrorString(end);
    // The first time for a key, say so (out of memory for the graph's activations, a step that
    // waits for the device): the step runs op by op, slower, until a recording succeeds.
    if (rec->captures == 1) {
      spdlog::warn("recorded step {}: not recorded ({}); runs op by op", key, reason);
    } else {
      spdlog::debug("recorded step {}: not recorded: {}", key, reason);
    }
    rec->Reset();
    // This rank alone (its memory, its device): its peers may have recorded the step.
    if (with_peers && (capture.out_of_memory() || end != cudaSuccess)) {
      return AloneFails(key, reason);
    }
    return step();  // op by op; the next step of this key tries again
  }
  const absl::Status launched = LaunchRecording(*rec, graph);
  cudaGraphDestroy(graph);
  if (!launched.ok()) {
    rec->Reset();
    if (with_peers) return AloneFails(key, std::string(launched.message()));
    spdlog::warn("recorded step {}: {}; runs op by op", key, std::string(launched.message()));
    rec->disabled = true;
    return step();
  }
  const auto uploads =
      std::count_if(rec->tape.begin(), rec->tape.end(), [](const cuda::StepRecording::Entry& e) {
        return e.kind == cuda::StepRecording::Entry::kUpload;
      });
  // The first recording of a key is worth a line (a batch size's first step); later ones follow
  // a replay that did not match.
  if (rec->captures == 1) {
    spdlog::info("recorded step {} as a CUDA graph: {} device calls, {} nodes, {} uploads ({} B)",
                 key, rec->tape.size(), rec->nodes, uploads, rec->arena_used);
  } else {
    spdlog::debug("recorded step {} again: {} device calls, {} nodes", key, rec->tape.size(),
                  rec->nodes);
  }
  return absl::OkStatus();
}

}  // namespace tpserve
