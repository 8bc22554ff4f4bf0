// CUDA emulator (tests only): NCCL for ranks that are threads of one process (include/nccl.h).
// Each collective is an operation on the rank's stream that deposits its input (a copy) in the
// group's mailbox when it reaches the head of the stream and completes once every rank's input
// is there; sends deposit and complete, receives complete when their message is there. Ranks of
// an aborted communicator drop their waiting operations; their peers keep waiting, as on GPUs.
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tpserve_cuda_emulator.h"

namespace {

struct Group;

struct CommState {
  std::shared_ptr<Group> group;
  int rank = 0;
  uint64_t next_collective = 0;
  bool aborted = false;
};

struct Group {
  int nranks = 0;
  int joined = 0;
  bool any_aborted = false;
  struct Collective {
    std::vector<std::vector<char>> inputs;  // per rank, empty until it arrives
    int arrived = 0, finished = 0;
  };
  std::map<uint64_t, Collective> collectives;
  std::map<std::pair<int, int>, std::deque<std::vector<char>>> mail;  // (from, to)
};

struct Registry {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<Group>> groups;
  uint64_t next_id = 0;
};
Registry& Reg() {
  static auto* r = new Registry;
  return *r;
}

size_t TypeSize(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
  }
  return 0;
}

struct P2p {
  bool send;
  const void* sendbuff;
  void* recvbuff;
  size_t bytes;
  int peer;
  std::shared_ptr<CommState> comm;
  cudaStream_t stream;
};
thread_local int t_group_depth = 0;
thread_local std::vector<P2p> t_grouped;

// Enqueues point-to-point operations of one rank's group call on `stream` as one operation.
// Its progress is reset when it completes: a CUDA graph that captured it runs it again.
void EnqueueP2p(std::vector<P2p> ops, cudaStream_t stream) {
  auto deposited = std::make_shared<bool>(false);
  auto received = std::make_shared<std::vector<bool>>(ops.size(), false);
  tpserve_emu::EnqueueWaiting(stream, [ops = std::move(ops), deposited, received]() {
    std::lock_guard<std::mutex> lock(Reg().mu);
    auto done = [&] {
      *deposited = false;
      received->assign(received->size(), false);
      return true;
    };
    if (ops.front().comm->aborted) return done();
    if (!*deposited) {
      for (const P2p& op : ops) {
        if (!op.send) continue;
        const char* p = static_cast<const char*>(op.sendbuff);
        op.comm->group->mail[{op.comm->rank, op.peer}].emplace_back(p, p + op.bytes);
      }
      *deposited = true;
    }
    bool all = true;
    for (size_t i = 0; i < ops.size(); ++i) {
      const P2p& op = ops[i];
      if (op.send || (*received)[i]) continue;
      auto& box = op.comm->group->mail[{op.peer, op.comm->rank}];
      if (box.empty()) {
        all = false;
        continue;
      }
      if (box.front().size() != op.bytes) {
        tpserve_emu::Fatal("ncclRecv of %zu bytes from rank %d matched a send of %zu bytes",
                           op.bytes, op.peer, box.front().size());
      }
      std::memcpy(op.recvbuff, box.front().data(), op.bytes);
      box.pop_front();
      (*received)[i] = true;
    }
    return all ? done() : false;
  });
}

enum class Kind { kAllReduce, kBroadcast };

ncclResult_t EnqueueCollective(Kind kind, const void* sendbuff, void* recvbuff, size_t count,
                               ncclDataType_t type, ncclRedOp_t op, int root, ncclComm_t comm,
                               cudaStream_t stream);

}  // namespace

struct ncclComm {
  std::shared_ptr<CommState> state;
};

namespace {

ncclResult_t EnqueueCollective(Kind kind, const void* sendbuff, void* recvbuff, size_t count,
                               ncclDataType_t type, ncclRedOp_t op, int root, ncclComm_t comm,
                               cudaStream_t stream) {
  if (comm == nullptr) return ncclInvalidArgument;
  const size_t bytes = count * TypeSize(type);
  std::shared_ptr<CommState> c = comm->state;
  {
    std::lock_guard<std::mutex> lock(Reg().mu);
    if (c->group->joined < c->group->nranks) return ncclInvalidUsage;  // init not complete
    if (root < 0 || root >= c->group->nranks) return ncclInvalidArgument;
    if (kind == Kind::kAllReduce && (type != ncclFloat32 || op != ncclSum)) {
      std::fprintf(stderr, "nccl emulator: all-reduce supports float32 sums only\n");
      return ncclInvalidArgument;
    }
  }
  if (bytes > 0 &&
      (!tpserve_emu::IsDevice(recvbuff, bytes) || ((kind == Kind::kAllReduce || c->rank == root) &&
                                                   !tpserve_emu::IsDevice(sendbuff, bytes)))) {
    std::fprintf(stderr, "nccl emulator: a collective's buffer is not (all) device memory\n");
    return ncclInvalidArgument;
  }
  // Collectives match across ranks by the order in which they run on each rank's stream, as on
  // GPUs (a CUDA graph that captured one runs it again, in its place in the order): the number is
  // taken when it first runs, and the progress reset when it completes.
  struct Progress {
    bool arrived = false;
    uint64_t seq = 0;
  };
  auto progress = std::make_shared<Progress>();
  tpserve_emu::EnqueueWaiting(stream, [=]() {
    std::lock_guard<std::mutex> lock(Reg().mu);
    if (c->aborted) {
      *progress = Progress{};
      return true;
    }
    Group& g = *c->group;
    if (!progress->arrived) progress->seq = c->next_collective++;
    const uint64_t seq = progress->seq;
    Group::Collective& coll = g.collectives[seq];
    if (!progress->arrived) {
      coll.inputs.resize(g.nranks);
      const char* p = static_cast<const char*>(sendbuff);
      if (kind == Kind::kAllReduce || c->rank == root) coll.inputs[c->rank].assign(p, p + bytes);
      ++coll.arrived;
      progress->arrived = true;
    }
    if (coll.arrived < g.nranks) return false;
    if (kind == Kind::kBroadcast) {
      std::memcpy(recvbuff, coll.inputs[root].data(), bytes);
    } else {
      auto* out = static_cast<float*>(recvbuff);
      for (size_t i = 0; i < count; ++i) {
        float sum = 0.0f;
        for (int r = 0; r < g.nranks; ++r) {
          float v;
          std::memcpy(&v, coll.inputs[r].data() + i * sizeof(float), sizeof(float));
          sum += v;
        }
        out[i] = sum;
      }
    }
    if (++coll.finished == g.nranks) g.collectives.erase(seq);
    *progress = Progress{};
    return true;
  });
  return ncclSuccess;
}

ncclResult_t AddP2p(bool send, const void* sendbuff, void* recvbuff, size_t count,
                    ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream) {
  if (comm == nullptr) return ncclInvalidArgument;
  const size_t bytes = count * TypeSize(type);
  if (peer < 0 || peer >= comm->state->group->nranks) return ncclInvalidArgument;
  if (bytes > 0 && !tpserve_emu::IsDevice(send ? sendbuff : recvbuff, bytes)) {
    std::fprintf(stderr, "nccl emulator: a %s buffer is not (all) device memory\n",
                 send ? "send" : "receive");
    return ncclInvalidArgument;
  }
  P2p op{send, sendbuff, recvbuff, bytes, peer, comm->state, stream};
  if (t_group_depth > 0) {
    t_grouped.push_back(op);
  } else {
    EnqueueP2p({op}, stream);
  }
  return ncclSuccess;
}

}  // namespace

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error";
    case ncclSystemError:
      return "unhandled system error";
    case ncclInternalError:
      return "internal error";
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage";
    case ncclRemoteError:
      return "remote process exited or there was a network error";
    case ncclInProgress:
      return "NCCL operation in progress";
    default:
      return "unknown result code";
  }
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id->internal, 0, sizeof(id->internal));
  std::lock_guard<std::mutex> lock(Reg().mu);
  std::snprintf(id->internal, sizeof(id->internal), "nccl-emulator-%llu",
                static_cast<unsigned long long>(Reg().next_id++));
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t* config) {
  if (comm == nullptr || nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) return ncclUnhandledCudaError;
  const bool blocking = config == nullptr || config->blocking != 0;
  auto state = std::make_shared<CommState>();
  state->rank = rank;
  {
    std::lock_guard<std::mutex> lock(Reg().mu);
    std::shared_ptr<Group>& g = Reg().groups[std::string(id.internal, sizeof(id.internal))];
    if (g == nullptr) {
      g = std::make_shared<Group>();
      g->nranks = nranks;
    }
    if (g->nranks != nranks) return ncclInvalidUsage;
    ++g->joined;
    state->group = g;
  }
  *comm = new ncclComm{state};
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(Reg().mu);
      if (state->group->joined == nranks) return ncclSuccess;
    }
    if (!blocking) return ncclInProgress;
    if (std::chrono::steady_clock::now() - start > std::chrono::seconds(120)) {
      tpserve_emu::Fatal(
          "a blocking ncclCommInitRank waited 120 s for its peers (on a GPU: a "
          "hang)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (comm == nullptr || async_error == nullptr) return ncclInvalidArgument;
  std::lock_guard<std::mutex> lock(Reg().mu);
  const Group& g = *comm->state->group;
  *async_error =
      g.any_aborted ? ncclRemoteError : (g.joined < g.nranks ? ncclInProgress : ncclSuccess);
  return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  return comm == nullptr ? ncclInvalidArgument : ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  {
    std::lock_guard<std::mutex> lock(Reg().mu);
    comm->state->aborted = true;
    comm->state->group->any_aborted = true;
  }
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t stream) {
  return EnqueueCollective(Kind::kAllReduce, sendbuff, recvbuff, count, datatype, op, 0, comm,
                           stream);
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count,
                           ncclDataType_t datatype, int root, ncclComm_t comm,
                           cudaStream_t stream) {
  return EnqueueCollective(Kind::kBroadcast, sendbuff, recvbuff, count, datatype, ncclSum, root,
                           comm, stream);
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  return AddP2p(true, sendbuff, nullptr, count, datatype, peer, comm, stream);
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  return AddP2p(false, nullptr, recvbuff, count, datatype, peer, comm, stream);
}

ncclResult_t ncclGroupStart() {
  ++t_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (t_group_depth == 0) return ncclInvalidUsage;
  if (--t_group_depth > 0) return ncclSuccess;
  // One operation per stream, holding that stream's sends and receives of the group.
  std::map<cudaStream_t, std::vector<P2p>> by_stream;
  for (P2p& op : t_grouped) by_stream[op.stream].push_back(op);
  t_grouped.clear();
  for (auto& [stream, ops] : by_stream) EnqueueP2p(std::move(ops), stream);
  return ncclSuccess;
}
