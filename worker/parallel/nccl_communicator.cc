#include "worker/parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <numeric>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "worker/backend/cuda/cuda_launch.h"

namespace tpserve {
namespace {

constexpr absl::Duration kPollInterval = absl::Microseconds(20);
// WaitPending polls: a sleep would add the scheduler's wake-up latency (~60-80 us with the
// default timer slack) to every wait. Spin (yielding) this long first, then sleep between polls.
constexpr absl::Duration kSpinBeforeSleeping = absl::Milliseconds(2);

absl::Status CudaError(cudaError_t err, const std::string& what) {
  if (err == cudaSuccess) return absl::OkStatus();
  if (err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": no usable GPU (", cudaGetErrorName(err), ", code ", static_cast<int>(err),
        err == cudaErrorInsufficientDriver ? "): no NVIDIA driver on this machine" : ")"));
  }
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

absl::Status NcclError(ncclResult_t r, const std::string& what) {
  if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat(what, ": NCCL error ", static_cast<int>(r), " (", ncclGetErrorString(r), ")"));
}

// A collective inside a step being recorded as a CUDA graph or replayed from one (the thread's
// launch observer, cuda_launch.h) is shown to the recording with its arguments: while capturing it
// is then enqueued (into the graph), while replaying it is not (the graph runs it). True: enqueue.
class CallBytes {
 public:
  template <typename T>
  CallBytes& Add(const T& v) {
    static_assert(std::has_unique_object_representations_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
    return *this;
  }
  bool Enqueue(const char* what, cudaStream_t stream) const {
    cuda::LaunchObserver* observer = cuda::t_launch_observer;
    return observer == nullptr || observer->OnLaunch(what, dim3(0, 0, 0), dim3(0, 0, 0), 0, stream,
                                                     bytes_.data(), bytes_.size());
  }

 private:
  std::vector<uint8_t> bytes_;
};

}  // namespace

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t done = nullptr;
  float* barrier_buf = nullptr;  // one float on the device for Barrier
};

NcclCommunicator::NcclCommunicator(const NcclOptions& options, std::unique_ptr<Impl> impl)
    : options_(options), impl_(std::move(impl)) {}

NcclCommunicator::~NcclCommunicator() {
  if (impl_->comm != nullptr) {
    // Non-blocking communicator: finalize completes asynchronously; destroy only after it did,
    // and abort instead when it does not within the collective deadline.
    bool finalized = false;
    if (!broken() && ncclCommFinalize(impl_->comm) != ncclInternalError) {
      const absl::Time deadline = absl::Now() + options_.op_timeout;
      for (;;) {
        ncclResult_t state = ncclInProgress;
        ncclCommGetAsyncError(impl_->comm, &state);
        if (state != ncclInProgress) {
          finalized = state == ncclSuccess;
          break;
        }
        if (absl::Now() > deadline) break;
        absl::SleepFor(kPollInterval);
      }
    }
    if (finalized) {
      ncclCommDestroy(impl_->comm);
    } else {
      ncclCommAbort(impl_->comm);
    }
  }
  if (impl_->done != nullptr) cudaEventDestroy(impl_->done);
  if (impl_->barrier_buf != nullptr) cudaFree(impl_->barrier_buf);
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    KvStore& store, const NcclOptions& options, cudaStream_t stream) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL: rank ", options.rank, " of ",
                                                   options.world_size, " is not a valid rank"));
  }
  int devices = 0;
  RETURN_IF_ERROR(CudaError(cudaGetDeviceCount(&devices), "NCCL: cudaGetDeviceCount"));
  RETURN_IF_ERROR(CudaError(cudaSetDevice(options.device),
                            absl::StrCat("NCCL: cudaSetDevice(", options.device, ")")));

  // The unique id through the rendezvous store.
  const std::string key = options.store_prefix + "nccl_unique_id";
  ncclUniqueId id;
  if (options.rank == 0) {
    RETURN_IF_ERROR(NcclError(ncclGetUniqueId(&id), "ncclGetUniqueId"));
    RETURN_IF_ERROR(store.Set(key, std::string(id.internal, sizeof(id.internal))));
  } else {
    ASSIGN_OR_RETURN(std::string value, store.Get(key, options.init_timeout));
    if (value.size() != sizeof(id.internal)) {
      return absl::InvalidArgumentError(absl::StrCat("NCCL: the store's ", key, " has ",
                                                     value.size(), " bytes, expected ",
                                                     sizeof(id.internal)));
    }
    std::copy(value.begin(), value.end(), id.internal);
  }

  auto impl = std::make_unique<Impl>();
  impl->stream = stream;
  RETURN_IF_ERROR(CudaError(cudaEventCreateWithFlags(&impl->done, cudaEventDisableTiming),
                            "NCCL: cudaEventCreate"));
  RETURN_IF_ERROR(CudaError(cudaMalloc(&impl->barrier_buf, sizeof(float)), "NCCL: cudaMalloc"));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r =
      ncclCommInitRankConfig(&impl->comm, options.world_size, id, options.rank, &config);
  const absl::Time deadline = absl::Now() + options.init_timeout;
  while (r == ncclInProgress || (r == ncclSuccess && impl->comm != nullptr)) {
    ncclResult_t state = ncclInProgress;
    ncclCommGetAsyncError(impl->comm, &state);
    if (state == ncclSuccess) break;
    if (state != ncclInProgress) {
      r = state;
      break;
    }
    if (absl::Now() > deadline) {
      ncclCommAbort(impl->comm);
      impl->comm = nullptr;
      return absl::DeadlineExceededError(absl::StrCat(
          "NCCL: rank ", options.rank, " of ", options.world_size,
          ": the group did not form within ", absl::FormatDuration(options.init_timeout),
          " (a peer missing or stuck); aborted"));
    }
    absl::SleepFor(kPollInterval * 50);
  }
  if (r != ncclSuccess && r != ncclInProgress) {
    if (impl->comm != nullptr) ncclCommAbort(impl->comm);
    impl->comm = nullptr;
    return NcclError(r, absl::StrCat("NCCL: rank ", options.rank, ": ncclCommInitRankConfig"));
  }
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(options, std::move(impl)));
}

absl::Status NcclCommunicator::Fail(absl::Status st) {
  ncclCommAbort(impl_->comm);
  impl_->comm = nullptr;
  broken_status_ = st;
  pending_.clear();
  return st;
}

absl::Status NcclCommunicator::Finish(const std::string& what, int enqueue_result) {
  const auto enqueued = static_cast<ncclResult_t>(enqueue_result);
  if (enqueued != ncclSuccess && enqueued != ncclInProgress) {
    return Fail(NcclError(enqueued, what));
  }
  const absl::Time deadline = absl::Now() + options_.op_timeout;
  // A non-blocking communicator may still be enqueueing: wait for ncclSuccess first.
  for (;;) {
    ncclResult_t state = ncclInProgress;
    ncclCommGetAsyncError(impl_->comm, &state);
    if (state == ncclSuccess) break;
    if (state != ncclInProgress) return Fail(NcclError(state, what));
    if (absl::Now() > deadline) {
      return Fail(absl::DeadlineExceededError(
          absl::StrCat(what, ": not enqueued after ", absl::FormatDuration(options_.op_timeout),
                       "; NCCL communicator aborted")));
    }
    std::this_thread::yield();
  }
  pending_ = what;
  return absl::OkStatus();
}

absl::Status NcclCommunicator::WaitPending() {
  if (broken()) return broken_status_;
  if (pending_.empty()) return absl::OkStatus();
  // Inside a recorded step nothing may wait (the graph runs later): the caller waits after it.
  if (cuda::t_launch_observer != nullptr) return absl::OkStatus();
  const std::string what = pending_;
  // One event after the last collective covers every earlier one (one stream).
  cudaError_t err = cudaEventRecord(impl_->done, impl_->stream);
  if (err != cudaSuccess) return Fail(CudaError(err, what));
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + options_.op_timeout;
  const absl::Time spin_until = start + kSpinBeforeSleeping;
  for (;;) {
    err = cudaEventQuery(impl_->done);
    if (err == cudaSuccess) {
      pending_.clear();
      return absl::OkStatus();
    }
    if (err != cudaErrorNotReady) return Fail(CudaError(err, what));
    ncclResult_t state = ncclSuccess;
    ncclCommGetAsyncError(impl_->comm, &state);
    if (state != ncclSuccess && state != ncclInProgress) return Fail(NcclError(state, what));
    if (absl::Now() > deadline) {
      return Fail(absl::DeadlineExceededError(
          absl::StrCat(what, ": not done after ", absl::FormatDuration(options_.op_timeout),
                       " (rank ", options_.rank, " of ", options_.world_size,
                       "; a peer died or stalled); NCCL communicator aborted")));
    }
    if (absl::Now() < spin_until) {
      std::this_thread::yield();
    } else {
      absl::SleepFor(kPollInterval);
    }
  }
}

absl::Status NcclCommunicator::AllReduceSum(float* data, size_t count) {
  if (broken()) return broken_status_;
  const std::string what = absl::StrCat("NCCL all-reduce of ", count, " floats");
  if (!CallBytes().Add(data).Add(count).Enqueue("ncclAllReduce", impl_->stream)) {
    pending_ = what;  // replayed: the recorded graph runs it
    return absl::OkStatus();
  }
  return Finish(what,
                ncclAllReduce(data, data, count, ncclFloat32, ncclSum, impl_->comm, impl_->stream));
}

absl::Status NcclCommunicator::GatherV(const float* in, std::span<const size_t> counts, float* out,
                                       int root) {
  if (broken()) return broken_status_;
  if (counts.size() != static_cast<size_t>(world_size())) {
    return absl::InvalidArgumentError("GatherV: one count per rank");
  }
  const std::string what = absl::StrCat("NCCL gather-v to rank ", root);
  CallBytes call;
  call.Add(in).Add(out).Add(root);
  for (size_t c : counts) call.Add(c);
  if (!call.Enqueue("ncclGatherV", impl_->stream)) {
    pending_ = what;
    return absl::OkStatus();
  }
  ncclResult_t r = ncclGroupStart();
  if (rank() == root) {
    size_t offset = 0;
    for (int src = 0; src < world_size(); ++src) {
      if (src == root) {
        if (counts[src] > 0 && out + offset != in) {
          const cudaError_t err = cudaMemcpyAsync(out + offset, in, counts[src] * sizeof(float),
                                                  cudaMemcpyDeviceToDevice, impl_->stream);
          if (err != cudaSuccess) {
            ncclGroupEnd();
            return CudaError(err, what + ": root's own slice (device buffers only)");
          }
        }
      } else if (counts[src] > 0 && r == ncclSuccess) {
        r = ncclRecv(out + offset, counts[src], ncclFloat32, src, impl_->comm, impl_->stream);
      }
      offset += counts[src];
    }
  } else if (counts[rank()] > 0) {
    r = ncclSend(in, counts[rank()], ncclFloat32, root, impl_->comm, impl_->stream);
  }
  const ncclResult_t end = ncclGroupEnd();
  return Finish(what, r != ncclSuccess && r != ncclInProgress ? r : end);
}

absl::Status NcclCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (broken()) return broken_status_;
  const std::string what = absl::StrCat("NCCL broadcast of ", bytes, " bytes from rank ", root);
  if (!CallBytes().Add(data).Add(bytes).Add(root).Enqueue("ncclBroadcast", impl_->stream)) {
    pending_ = what;
    return absl::OkStatus();
  }
  return Finish(what,
                ncclBroadcast(data, data, bytes, ncclUint8, root, impl_->comm, impl_->stream));
}

absl::Status NcclCommunicator::Barrier() {
  if (broken()) return broken_status_;
  RETURN_IF_ERROR(
      Finish("NCCL barrier", ncclAllReduce(impl_->barrier_buf, impl_->barrier_buf, 1, ncclFloat32,
                                           ncclSum, impl_->comm, impl_->stream)));
  return WaitPending();
}

}  // namespace tpserve
