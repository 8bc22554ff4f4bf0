// One rank of the multi-process Gloo test (gloo_process_test.cc), started as a child process.
// Rendezvous goes through the coordinator's store over gRPC, as in production.
//
//   gloo_rank_child STORE_ADDR RANK WORLD PREFIX TIMEOUT_MS MODE [shm]
//
// With "shm", the Gloo communicator is wrapped by ShmCommunicator (all ranks run on this host,
// so it must be shared memory: exit 5 otherwise), and "collectives" also all-reduces a payload
// larger than a slot (through the Gloo fallback).
// MODE "collectives": runs each collective once, checks the results against the arithmetic of
//   the inputs, exits 0 (2 on a wrong value, 3 on an error status, 4 when the rendezvous failed).
// MODE "hold": after a barrier, sets PREFIX+"ready/"+RANK in the store and all-reduces in a loop
//   until a collective fails; then stores "<ms since the last success> <status>" under
//   PREFIX+"result/"+RANK and exits 3.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/cluster/rendezvous_client.h"
#include "worker/parallel/gloo_communicator.h"
#include "worker/parallel/shm_communicator.h"

namespace tpserve {
namespace {

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "rank child: %s\n", st.ToString().c_str());
  return 3;
}

int Wrong(const std::string& what) {
  std::fprintf(stderr, "rank child: wrong result: %s\n", what.c_str());
  return 2;
}

int Collectives(Communicator& comm, bool shm) {
  const int r = comm.rank();
  const int n = comm.world_size();
  std::vector<size_t> sizes = {size_t{576}, size_t{1} << 20};
  if (shm) sizes.push_back(size_t{5} << 20);  // 20 MB: more than a 16 MB slot
  for (size_t count : sizes) {
    std::vector<float> data(count);
    for (size_t i = 0; i < count; ++i) data[i] = static_cast<float>((r + 1) * (i % 997));
    if (absl::Status st = comm.AllReduceSum(data.data(), count); !st.ok()) return Fail(st);
    // sum over ranks k of (k+1) * (i % 997) = (i % 997) * n(n+1)/2
    for (size_t i = 0; i < count; ++i) {
      const float want = static_cast<float>((i % 997) * n * (n + 1) / 2);
      if (data[i] != want) {
        return Wrong(absl::StrCat("AllReduceSum[", i, "] = ", data[i], ", want ", want));
      }
    }
  }
  std::vector<size_t> counts;
  for (int k = 0; k < n; ++k) counts.push_back(5 + 3 * k);  // uneven, like a vocab split
  size_t total = 0;
  for (size_t c : counts) total += c;
  std::vector<float> in(counts[r]);
  for (size_t j = 0; j < in.size(); ++j) in[j] = static_cast<float>(100 * r + j);
  std::vector<float> out(total);
  if (absl::Status st = comm.GatherV(in.data(), counts, out.data(), 0); !st.ok()) return Fail(st);
  if (r == 0) {
    size_t i = 0;
    for (int k = 0; k < n; ++k) {
      for (size_t j = 0; j < counts[k]; ++j, ++i) {
        if (out[i] != static_cast<float>(100 * k + j)) {
          return Wrong(absl::StrCat("GatherV[", i, "] = ", out[i]));
        }
      }
    }
  }
  std::vector<int> tokens(8, r == n - 1 ? 0 : -1);
  if (r == n - 1) {
    for (int i = 0; i < 8; ++i) tokens[i] = 1000 + i;
  }
  if (absl::Status st = comm.Broadcast(tokens.data(), tokens.size() * sizeof(int), n - 1);
      !st.ok()) {
    return Fail(st);
  }
  for (int i = 0; i < 8; ++i) {
    if (tokens[i] != 1000 + i) return Wrong(absl::StrCat("Broadcast[", i, "] = ", tokens[i]));
  }
  if (absl::Status st = comm.Barrier(); !st.ok()) return Fail(st);
  return 0;
}

int Hold(Communicator& comm, KvStore& store, const std::string& prefix) {
  if (absl::Status st = comm.Barrier(); !st.ok()) return Fail(st);
  if (absl::Status st = store.Set(absl::StrCat(prefix, "ready/", comm.rank()), "1"); !st.ok()) {
    return Fail(st);
  }
  std::vector<float> data(576, 1.0f);
  absl::Time last_ok = absl::Now();
  while (true) {
    absl::Status st = comm.AllReduceSum(data.data(), data.size());
    if (!st.ok()) {
      const int64_t ms = absl::ToInt64Milliseconds(absl::Now() - last_ok);
      (void)store.Set(absl::StrCat(prefix, "result/", comm.rank()),
                      absl::StrCat(ms, " ", st.ToString()));
      return Fail(st);
    }
    std::fill(data.begin(), data.end(), 1.0f);
    last_ok = absl::Now();
    absl::SleepFor(absl::Milliseconds(1));
  }
}

int Main(int argc, char** argv) {
  if (argc != 7 && !(argc == 8 && std::string(argv[7]) == "shm")) {
    std::fprintf(stderr, "usage: %s STORE RANK WORLD PREFIX TIMEOUT_MS collectives|hold [shm]\n",
                 argv[0]);
    return 64;
  }
  const bool shm = argc == 8;
  const std::string address = argv[1];
  GlooOptions opts;
  opts.rank = std::atoi(argv[2]);
  opts.world_size = std::atoi(argv[3]);
  opts.store_prefix = argv[4];
  opts.timeout = absl::Milliseconds(std::atoi(argv[5]));
  const std::string mode = argv[6];

  std::unique_ptr<KvStore> store = MakeRendezvousClient(address);
  absl::StatusOr<std::unique_ptr<GlooCommunicator>> comm = GlooCommunicator::Create(*store, opts);
  if (!comm.ok()) {
    Fail(comm.status());
    return 4;  // rendezvous failed: the test may form the group again
  }
  std::unique_ptr<Communicator> group = std::move(*comm);
  if (shm) {
    absl::StatusOr<std::unique_ptr<Communicator>> wrapped =
        ShmCommunicator::Wrap(*store,
                              ShmOptions{.rank = opts.rank,
                                         .world_size = opts.world_size,
                                         .store_prefix = opts.store_prefix,
                                         .timeout = opts.timeout},
                              std::move(group));
    if (!wrapped.ok()) {
      Fail(wrapped.status());
      return 4;
    }
    group = std::move(*wrapped);
    if (dynamic_cast<ShmCommunicator*>(group.get()) == nullptr) {
      std::fprintf(stderr, "rank child: ranks on one host did not get shared memory\n");
      return 5;
    }
  }
  if (mode == "collectives") return Collectives(*group, shm);
  if (mode == "hold") return Hold(*group, *store, opts.store_prefix);
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 64;
}

}  // namespace
}  // namespace tpserve

int main(int argc, char** argv) { return tpserve::Main(argc, argv); }
