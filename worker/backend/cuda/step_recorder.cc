#include "worker/backend/cuda/step_recorder.h"

#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace tpserve::cuda {
namespace {

constexpr size_t kUploadAlign = 64;

size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

// An upload's place: room for it to grow to the next power of two (block tables grow a block at a
// time as sequences get longer).
size_t UploadCapacity(size_t bytes) { return std::max<size_t>(kUploadAlign, std::bit_ceil(bytes)); }

void Append(std::vector<uint8_t>* out, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  out->insert(out->end(), b, b + n);
}

// The name a call's bytes start with (a string literal's address).
const char* CallName(const std::vector<uint8_t>& call) {
  const char* name = nullptr;
  if (call.size() >= sizeof(name)) std::memcpy(&name, call.data(), sizeof(name));
  return name != nullptr ? name : "?";
}

const char* KindName(StepRecording::Entry::Kind k) {
  switch (k) {
    case StepRecording::Entry::kCall:
      return "a device call";
    case StepRecording::Entry::kAlloc:
      return "an allocation";
    case StepRecording::Entry::kUpload:
      return "an upload";
  }
  return "?";
}

}  // namespace

StepRecording::~StepRecording() { Reset(); }

void StepRecording::Reset() {
  if (exec != nullptr) cudaGraphExecDestroy(exec);
  exec = nullptr;
  nodes = 0;
  tape.clear();
  arena.reset();
  arena_used = 0;
  host_arena.clear();
  pool.reset();  // gives the graph's memory back (cudaFree: never while a capture is open)
}

StepRecorder::StepRecorder(std::shared_ptr<StepRecording> rec, Mode mode, cudaStream_t stream)
    : rec_(std::move(rec)), mode_(mode), stream_(stream) {}

void StepRecorder::Fail(std::string why) {
  if (failure_.empty()) failure_ = std::move(why);
}

StepRecording::Entry* StepRecorder::Next(StepRecording::Entry::Kind kind, const char* what) {
  if (failed()) return nullptr;
  if (cursor_ >= rec_->tape.size()) {
    Fail(absl::StrCat(what, " after the recording's last entry (", rec_->tape.size(), ")"));
    return nullptr;
  }
  StepRecording::Entry& e = rec_->tape[cursor_];
  if (e.kind != kind) {
    Fail(absl::StrCat(
        what, " at entry ", cursor_, ", where the recording has ", KindName(e.kind),
        e.kind == StepRecording::Entry::kCall ? absl::StrCat(" (", CallName(e.call), ")") : ""));
    return nullptr;
  }
  ++cursor_;
  return &e;
}

bool StepRecorder::OnLaunch(const char* kernel, const dim3& grid, const dim3& block, size_t smem,
                            cudaStream_t stream, const void* args, size_t args_bytes) {
  if (stream != stream_) {
    Fail(absl::StrCat("kernel ", kernel, " launched on another stream"));
    return mode_ == Mode::kCapture;  // it is not in the capture either way
  }
  std::vector<uint8_t> call;
  call.reserve(48 + args_bytes);
  Append(&call, &kernel, sizeof(kernel));
  const unsigned dims[6] = {grid.x, grid.y, grid.z, block.x, block.y, block.z};
  Append(&call, dims, sizeof(dims));
  const uint64_t shared = smem;
  Append(&call, &shared, sizeof(shared));
  Append(&call, args, args_bytes);
  if (mode_ == Mode::kCapture) {
    rec_->tape.push_back(
        StepRecording::Entry{.kind = StepRecording::Entry::kCall, .call = std::move(call)});
    return true;
  }
  const StepRecording::Entry* e = Next(StepRecording::Entry::kCall, kernel);
  if (e != nullptr && e->call != call) {
    Fail(absl::StrCat("launch of ", kernel, " at entry ", cursor_ - 1,
                      " differs from the recording's (", CallName(e->call), ")"));
  }
  return false;
}

bool StepRecorder::OnCall(const char* what, const void* args, size_t args_bytes) {
  return OnLaunch(what, dim3(0, 0, 0), dim3(0, 0, 0), 0, stream_, args, args_bytes);
}

std::shared_ptr<void> StepRecorder::Alloc(size_t bytes) {
  if (mode_ == Mode::kCapture) {
    if (failed()) return nullptr;
    absl::StatusOr<std::shared_ptr<void>> p = rec_->pool->Get(bytes);
    if (!p.ok()) {
      out_of_memory_ = !failed();
      Fail(absl::StrCat("allocating ", bytes, " bytes: ", p.status().message()));
      return nullptr;
    }
    rec_->tape.push_back(StepRecording::Entry{
        .kind = StepRecording::Entry::kAlloc, .call = {}, .bytes = bytes, .ptr = p->get()});
    return *std::move(p);
  }
  const StepRecording::Entry* e = Next(StepRecording::Entry::kAlloc, "an allocation");
  if (e == nullptr) return nullptr;
  if (e->bytes != bytes) {
    Fail(absl::StrCat("allocation at entry ", cursor_ - 1, " of ", bytes,
                      " bytes, the recording's was ", e->bytes));
    return nullptr;
  }
  // The recorded address, kept alive with the recording.
  return std::shared_ptr<void>(rec_, e->ptr);
}

const void* StepRecorder::Upload(const void* data, size_t bytes) {
  if (failed()) return nullptr;
  StepRecording& r = *rec_;
  const auto* base = static_cast<const uint8_t*>(r.arena.get());
  if (mode_ == Mode::kCapture) {
    for (size_t i = 0; i < uploads_.size(); ++i) {
      const auto [offset, n] = uploads_[i];
      if (n == bytes && std::memcmp(r.host_arena.data() + offset, data, bytes) == 0) {
        r.tape.push_back(StepRecording::Entry{.kind = StepRecording::Entry::kUpload,
                                              .call = {},
                                              .bytes = n,
                                              .offset = offset,
                                              .same_as = static_cast<int>(i)});
        uploads_.emplace_back(offset, bytes);
        return base + offset;
      }
    }
    const size_t offset = AlignUp(r.arena_used, kUploadAlign), capacity = UploadCapacity(bytes);
    if (offset + capacity > r.arena_capacity) {
      Fail(absl::StrCat("the step's uploads need more than the ", r.arena_capacity,
                        " bytes of the upload arena"));
      r.arena_capacity = 2 * (offset + capacity);  // the next capture's
      return nullptr;
    }
    if (bytes > 0) std::memcpy(r.host_arena.data() + offset, data, bytes);
    r.arena_used = offset + capacity;
    r.tape.push_back(StepRecording::Entry{
        .kind = StepRecording::Entry::kUpload, .call = {}, .bytes = capacity, .offset = offset});
    uploads_.emplace_back(offset, bytes);
    return base + offset;
  }
  const StepRecording::Entry* e = Next(StepRecording::Entry::kUpload, "an upload");
  if (e == nullptr) return nullptr;
  if (e->same_as >= 0) {
    const auto [offset, n] = uploads_[e->same_as];
    if (n != bytes || std::memcmp(r.host_arena.data() + offset, data, bytes) != 0) {
      Fail(absl::StrCat("upload at entry ", cursor_ - 1,
                        " no longer repeats an earlier one of the step"));
      return nullptr;
    }
  } else if (bytes > e->bytes) {
    Fail(absl::StrCat("upload at entry ", cursor_ - 1, " of ", bytes, " bytes outgrew its ",
                      e->bytes));
    return nullptr;
  } else if (bytes > 0) {
    std::memcpy(r.host_arena.data() + e->offset, data, bytes);
  }
  uploads_.emplace_back(e->offset, bytes);
  return base + e->offset;
}

}  // namespace tpserve::cuda
