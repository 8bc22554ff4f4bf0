#include "worker/parallel/gloo_communicator.h"

#include <net/if.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/common/error.h"
#include "gloo/math.h"
#include "gloo/rendezvous/context.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"
#include "gloo/types.h"
#include "worker/parallel/gloo_store.h"

namespace tpserve {
namespace {

// Slot prefix of GatherV's point-to-point messages; Gloo's own collectives use 0x01..0x0f.
constexpr uint8_t kGatherVSlotPrefix = 0xA1;

std::chrono::milliseconds ToMillis(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

// Gloo's timeouts read "Timed out waiting ..."; everything else is a broken connection.
absl::StatusCode CodeFor(const std::string& gloo_message) {
  return absl::StrContains(gloo_message, "Timed out") ||
                 absl::StrContains(gloo_message, "timed out") ||
                 absl::StrContains(gloo_message, "timeout")
             ? absl::StatusCode::kDeadlineExceeded
             : absl::StatusCode::kUnavailable;
}

// Gloo writes to its sockets without MSG_NOSIGNAL: a write to a peer that just died raises
// SIGPIPE, whose default action kills this process before Gloo can report EPIPE. Ignoring it
// process-wide turns a dead peer into an error status (gRPC and the rest of the code do not rely
// on SIGPIPE).
void IgnoreSigpipeOnce() {
  static std::once_flag once;
  std::call_once(once, []() { signal(SIGPIPE, SIG_IGN); });
}

// Gloo's CreateDeviceAttr crashes (segfault, not an exception) on a host name that does not
// resolve, so both the host and the interface are checked here first.
absl::Status CheckListenAddress(const GlooOptions& options) {
  if (!options.interface.empty()) {
    if (if_nametoindex(options.interface.c_str()) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("gloo: network interface '", options.interface,
                                                     "' does not exist on this host"));
    }
    return absl::OkStatus();
  }
  if (options.hostname.empty()) {
    return absl::InvalidArgumentError("gloo: neither a data-plane host nor an interface is set");
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(options.hostname.c_str(), nullptr, &hints, &found);
  if (rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat("gloo: cannot resolve data-plane host '",
                                                   options.hostname, "': ", gai_strerror(rc)));
  }
  freeaddrinfo(found);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<GlooCommunicator>> GlooCommunicator::Create(
    KvStore& store, const GlooOptions& options) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gloo: rank ", options.rank, " is outside a group of ", options.world_size, " ranks"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("gloo: timeout must be positive");
  }
  const std::string where =
      absl::StrCat("gloo rendezvous (rank ", options.rank, " of ", options.world_size,
                   ", store prefix '", options.store_prefix, "')");
  if (absl::Status st = CheckListenAddress(options); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat(where, ": ", st.message()));
  }
  IgnoreSigpipeOnce();
  try {
    gloo::transport::tcp::attr attr;
    if (!options.interface.empty()) {
      attr.iface = options.interface;
    } else {
      attr.hostname = options.hostname;
    }
    std::shared_ptr<gloo::transport::Device> device = gloo::transport::tcp::CreateDevice(attr);
    auto context = std::make_shared<gloo::rendezvous::Context>(options.rank, options.world_size);
    context->setTimeout(ToMillis(options.timeout));
    GlooKvStoreAdapter adapter(store, options.store_prefix, options.timeout);
    context->connectFullMesh(adapter, device);
    return std::unique_ptr<GlooCommunicator>(new GlooCommunicator(options, std::move(context)));
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    return absl::Status(CodeFor(msg), absl::StrCat(where, " failed: ", msg));
  }
}

GlooCommunicator::GlooCommunicator(const GlooOptions& options,
                                   std::shared_ptr<gloo::Context> context)
    : options_(options), context_(std::move(context)) {}

GlooCommunicator::~GlooCommunicator() = default;

template <typename Op>
absl::Status GlooCommunicator::Run(const std::string& what, Op&& op) {
  if (broken()) {
    return absl::FailedPreconditionError(
        absl::StrCat("gloo ", what, " on rank ", options_.rank,
                     ": communicator is broken by an earlier failure and must be rebuilt: ",
                     broken_status_.message()));
  }
  try {
    return op();
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    broken_status_ = absl::Status(
        CodeFor(msg),
        absl::StrCat("gloo ", what, " failed on rank ", options_.rank, " of ", options_.world_size,
                     " (timeout ", absl::FormatDuration(options_.timeout), "): ", msg));
    // Close every pair so peers blocked on this rank fail now instead of at their deadline.
    try {
      context_->closeConnections();
    } catch (const std::exception&) {
    }
    return broken_status_;
  }
}

absl::Status GlooCommunicator::AllReduceSum(float* data, size_t count) {
  if (count == 0) return absl::OkStatus();
  if (data == nullptr) return absl::InvalidArgumentError("gloo AllReduceSum: null data");
  return Run(absl::StrCat("AllReduceSum(", count, " floats)"), [&]() {
    gloo::AllreduceOptions opts(context_);
    opts.setOutput(data, count);  // in place: no input buffer
    opts.setAlgorithm(count * sizeof(float) <= options_.bcube_max_bytes
                          ? gloo::AllreduceOptions::Algorithm::BCUBE
                          : gloo::AllreduceOptions::Algorithm::RING);
    opts.setReduceFunction(
        static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
    opts.setTimeout(ToMillis(options_.timeout));
    gloo::allreduce(opts);
    return absl::OkStatus();
  });
}

absl::Status GlooCommunicator::GatherV(const float* in, std::span<const size_t> counts, float* out,
                                       int root) {
  const int n = options_.world_size;
  const int me = options_.rank;
  if (counts.size() != static_cast<size_t>(n)) {
    return absl::InvalidArgumentError(
        absl::StrCat("gloo GatherV: ", counts.size(), " counts for a group of ", n, " ranks"));
  }
  if (root < 0 || root >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("gloo GatherV: root ", root, " outside a group of ", n, " ranks"));
  }
  if ((counts[me] > 0 && in == nullptr) || (me == root && out == nullptr)) {
    return absl::InvalidArgumentError("gloo GatherV: null buffer");
  }
  size_t total = 0;
  for (size_t c : counts) total += c;
  return Run(absl::StrCat("GatherV(", total, " floats to rank ", root, ")"), [&]() {
    const uint64_t slot = gloo::Slot::build(kGatherVSlotPrefix, 0);
    const auto timeout = ToMillis(options_.timeout);
    if (me != root) {
      if (counts[me] == 0) return absl::OkStatus();
      auto buf = context_->createUnboundBuffer(const_cast<float*>(in), counts[me] * sizeof(float));
      buf->send(root, slot);
      buf->waitSend(timeout);
      return absl::OkStatus();
    }
    // Root: one buffer per source rank, each a window of `out`, so a failure names its peer.
    std::vector<std::unique_ptr<gloo::transport::UnboundBuffer>> bufs(n);
    size_t offset = 0;
    for (int r = 0; r < n; ++r) {
      if (r == me) {
        if (counts[r] > 0 && in != out + offset) {
          std::memmove(out + offset, in, counts[r] * sizeof(float));
        }
      } else if (counts[r] > 0) {
        bufs[r] = context_->createUnboundBuffer(out + offset, counts[r] * sizeof(float));
        bufs[r]->recv(r, slot);
      }
      offset += counts[r];
    }
    for (int r = 0; r < n; ++r) {
      if (bufs[r] == nullptr) continue;
      try {
        bufs[r]->waitRecv(timeout);
      } catch (const std::exception& e) {
        throw gloo::IoException(absl::StrCat("waiting for peer rank ", r, ": ", e.what()));
      }
    }
    return absl::OkStatus();
  });
}

absl::Status GlooCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (root < 0 || root >= options_.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gloo Broadcast: root ", root, " outside a group of ", options_.world_size, " ranks"));
  }
  if (bytes == 0) return absl::OkStatus();
  if (data == nullptr) return absl::InvalidArgumentError("gloo Broadcast: null data");
  return Run(absl::StrCat("Broadcast(", bytes, " bytes from rank ", root, ")"), [&]() {
    gloo::BroadcastOptions opts(context_);
    opts.setOutput(static_cast<uint8_t*>(data), bytes);
    opts.setRoot(root);
    opts.setTimeout(ToMillis(options_.timeout));
    gloo::broadcast(opts);
    return absl::OkStatus();
  });
}

absl::Status GlooCommunicator::Barrier() {
  return Run("Barrier", [&]() {
    gloo::BarrierOptions opts(context_);
    opts.setTimeout(ToMillis(options_.timeout));
    gloo::barrier(opts);
    return absl::OkStatus();
  });
}

}  // namespace tpserve
