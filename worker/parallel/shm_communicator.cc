#include "worker/parallel/shm_communicator.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tpserve {
namespace {

constexpr uint64_t kMagic = 0x7470736572766531ull;  // "tpserve1"
constexpr int kMaxRanks = 64;
constexpr size_t kPage = 4096;

struct alignas(64) Flag {
  std::atomic<uint64_t> value{0};
};

struct Header {
  uint64_t magic;
  uint64_t token;
  int32_t world;
  int32_t pids[kMaxRanks];
  Flag arrived[kMaxRanks];
  Flag done[kMaxRanks];
};

size_t HeaderBytes() { return (sizeof(Header) + kPage - 1) / kPage * kPage; }

std::string ReadFirstLine(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string ReadLink(const char* path) {
  char buf[256];
  const ssize_t n = readlink(path, buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, n) : std::string();
}

// Processes that can share a segment and see each other's pids.
std::string HostIdentity() {
  return absl::StrCat(ReadFirstLine("/proc/sys/kernel/random/boot_id"), "|",
                      ReadLink("/proc/self/ns/pid"), "|", ReadLink("/proc/self/ns/mnt"));
}

// Whether `pid` is a live process (not gone, not a zombie).
bool Alive(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat;
  if (!std::getline(in, stat)) return false;
  const size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return false;
  const char state = stat[close + 2];
  return state != 'Z' && state != 'X';
}

inline void Pause() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

}  // namespace

struct ShmCommunicator::Segment {
  std::string name;
  void* base = nullptr;
  size_t bytes = 0;
  bool unlink_on_close = false;  // rank 0 until the name is unlinked after the negotiation
  Header* header() const { return static_cast<Header*>(base); }
  ~Segment() {
    if (base != nullptr) munmap(base, bytes);
    if (unlink_on_close) shm_unlink(name.c_str());
  }
};

absl::StatusOr<std::unique_ptr<Communicator>> ShmCommunicator::Wrap(
    KvStore& store, const ShmOptions& o, std::unique_ptr<Communicator> fallback) {
  if (o.world_size <= 1 || o.world_size > kMaxRanks) return fallback;
  const std::string prefix = o.store_prefix + "shm/";
  const std::string identity = o.identity_override.empty() ? HostIdentity() : o.identity_override;

  // Round 1: all on this host?
  std::vector<std::string> id_keys;
  for (int r = 0; r < o.world_size; ++r) id_keys.push_back(absl::StrCat(prefix, "id/", r));
  if (absl::Status st = store.Set(id_keys[o.rank], identity); !st.ok()) return st;
  for (int r = 0; r < o.world_size; ++r) {
    absl::StatusOr<std::string> id = store.Get(id_keys[r], o.timeout);
    if (!id.ok()) return id.status();
    if (*id != identity) return fallback;  // every rank sees the same mismatch
  }

  // Round 2: rank 0 creates the segment, the others map it; everyone reports.
  const size_t bytes = HeaderBytes() + o.slot_bytes * o.world_size;
  auto segment = std::make_unique<Segment>();
  segment->bytes = bytes;
  std::string why;  // empty: this rank mapped the segment
  if (o.rank == 0) {
    std::random_device rd;
    const uint64_t token = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    segment->name = absl::StrCat("/tpserve-", getpid(), "-", token);
    const int fd = shm_open(segment->name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
      why = absl::StrCat("shm_open(", segment->name, "): ", std::strerror(errno));
    } else {
      segment->unlink_on_close = true;
      // Reserve the pages now: on a full /dev/shm (containers default to 64 MB) this fails
      // here, and the group keeps Gloo, instead of a SIGBUS at the first collective.
      const int reserve = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
      if (reserve != 0) {
        why = absl::StrCat("reserving ", bytes >> 20, " MiB in /dev/shm: ", std::strerror(reserve));
      } else {
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
          why = absl::StrCat("mmap: ", std::strerror(errno));
        } else {
          segment->base = p;
          Header* h = segment->header();
          h->magic = kMagic;
          h->token = token;
          h->world = o.world_size;
          h->pids[0] = getpid();
        }
      }
      close(fd);
    }
    const std::string announce =
        why.empty() ? absl::StrCat(segment->name, " ", segment->header()->token) : "-";
    if (absl::Status st = store.Set(prefix + "segment", announce); !st.ok()) return st;
  } else {
    absl::StatusOr<std::string> announce = store.Get(prefix + "segment", o.timeout);
    if (!announce.ok()) return announce.status();
    std::vector<std::string> parts = absl::StrSplit(*announce, ' ');
    if (parts.size() != 2) {
      why = "rank 0 could not create the segment";
    } else {
      segment->name = parts[0];
      const int fd = shm_open(segment->name.c_str(), O_RDWR, 0600);
      if (fd < 0) {
        why = absl::StrCat("shm_open(", segment->name, "): ", std::strerror(errno));
      } else {
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (p == MAP_FAILED) {
          why = absl::StrCat("mmap: ", std::strerror(errno));
        } else {
          segment->base = p;
          Header* h = segment->header();
          if (h->magic != kMagic || absl::StrCat(h->token) != parts[1] ||
              h->world != o.world_size) {
            why = "the segment is not this group's";
          } else {
            h->pids[o.rank] = getpid();
          }
        }
      }
    }
  }
  std::vector<std::string> ok_keys;
  for (int r = 0; r < o.world_size; ++r) ok_keys.push_back(absl::StrCat(prefix, "ok/", r));
  if (absl::Status st = store.Set(ok_keys[o.rank], why.empty() ? "1" : why); !st.ok()) return st;
  bool all = true;
  for (int r = 0; r < o.world_size; ++r) {
    absl::StatusOr<std::string> ok = store.Get(ok_keys[r], o.timeout);
    if (!ok.ok()) return ok.status();
    all = all && *ok == "1";
  }
  if (o.rank == 0 && segment->unlink_on_close) {
    // Everyone has mapped it (or given up): the name is no longer needed, and nothing is left
    // in /dev/shm if a process dies later.
    shm_unlink(segment->name.c_str());
    segment->unlink_on_close = false;
  }
  if (!all) return fallback;
  return std::unique_ptr<Communicator>(new ShmCommunicator(
      o.rank, o.world_size, o.timeout, o.slot_bytes, std::move(segment), std::move(fallback)));
}

ShmCommunicator::ShmCommunicator(int rank, int world, absl::Duration timeout, size_t slot_bytes,
                                 std::unique_ptr<Segment> segment,
                                 std::unique_ptr<Communicator> fallback)
    : rank_(rank),
      world_(world),
      timeout_(timeout),
      slot_bytes_(slot_bytes),
      segment_(std::move(segment)),
      fallback_(std::move(fallback)) {}

ShmCommunicator::~ShmCommunicator() = default;

uint8_t* ShmCommunicator::slot(int r) const {
  return static_cast<uint8_t*>(segment_->base) + HeaderBytes() + slot_bytes_ * r;
}

void ShmCommunicator::Publish(bool arrived_flags, uint64_t value) {
  Header* h = segment_->header();
  (arrived_flags ? h->arrived : h->done)[rank_].value.store(value, std::memory_order_release);
}

absl::Status ShmCommunicator::Wait(const char* op, bool arrived_flags, uint64_t target, int first,
                                   int last) {
  Header* h = segment_->header();
  Flag* flags = arrived_flags ? h->arrived : h->done;
  const absl::Time deadline = absl::Now() + timeout_;
  for (int p = first; p <= last; ++p) {
    if (p == rank_) continue;
    for (uint64_t spins = 0; flags[p].value.load(std::memory_order_acquire) < target; ++spins) {
      if (spins < 4096) {
        Pause();
        continue;
      }
      sched_yield();  // two ranks and a coordinator may share two cores
      if (spins % 256 != 0) continue;
      if (!Alive(h->pids[p])) {
        broken_ = absl::UnavailableError(absl::StrCat(op, " on rank ", rank_, " of ", world_,
                                                      ": rank ", p, " (pid ", h->pids[p],
                                                      ") exited (shared-memory collectives)"));
        return broken_;
      }
      if (absl::Now() > deadline) {
        broken_ = absl::DeadlineExceededError(absl::StrCat(
            op, " on rank ", rank_, " of ", world_, ": rank ", p, " did not arrive within ",
            absl::FormatDuration(timeout_), " (shared-memory collectives)"));
        return broken_;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ShmCommunicator::AllReduceSum(float* data, size_t count) {
  if (!broken_.ok()) return broken_;
  if (count * sizeof(float) > slot_bytes_) return fallback_->AllReduceSum(data, count);
  const uint64_t s = ++seq_;
  // Our slot was read by everyone in the previous collective: wait until they are done.
  if (absl::Status st = Wait("AllReduceSum", false, s - 1, 0, world_ - 1); !st.ok()) return st;
  std::memcpy(slot(rank_), data, count * sizeof(float));
  Publish(true, s);
  if (absl::Status st = Wait("AllReduceSum", true, s, 0, world_ - 1); !st.ok()) return st;
  // Rank order, the same on every rank: every rank gets the same bits.
  const float* first = reinterpret_cast<const float*>(slot(0));
  for (size_t i = 0; i < count; ++i) data[i] = first[i];
  for (int p = 1; p < world_; ++p) {
    const float* src = reinterpret_cast<const float*>(slot(p));
    for (size_t i = 0; i < count; ++i) data[i] += src[i];
  }
  Publish(false, s);
  return absl::OkStatus();
}

absl::Status ShmCommunicator::GatherV(const float* in, std::span<const size_t> counts, float* out,
                                      int root) {
  if (!broken_.ok()) return broken_;
  if (static_cast<int>(counts.size()) != world_ || root < 0 || root >= world_) {
    return absl::InvalidArgumentError(absl::StrCat("GatherV: ", counts.size(), " counts, root ",
                                                   root, " for ", world_, " ranks"));
  }
  size_t largest = 0;
  for (size_t c : counts) largest = std::max(largest, c);
  if (largest * sizeof(float) > slot_bytes_) return fallback_->GatherV(in, counts, out, root);
  const uint64_t s = ++seq_;
  if (absl::Status st = Wait("GatherV", false, s - 1, 0, world_ - 1); !st.ok()) return st;
  std::memcpy(slot(rank_), in, counts[rank_] * sizeof(float));
  Publish(true, s);
  if (rank_ == root) {
    if (absl::Status st = Wait("GatherV", true, s, 0, world_ - 1); !st.ok()) return st;
    size_t at = 0;
    for (int p = 0; p < world_; ++p) {
      std::memcpy(out + at, slot(p), counts[p] * sizeof(float));
      at += counts[p];
    }
  }
  Publish(false, s);
  return absl::OkStatus();
}

absl::Status ShmCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (!broken_.ok()) return broken_;
  if (root < 0 || root >= world_) {
    return absl::InvalidArgumentError(absl::StrCat("Broadcast: root ", root));
  }
  if (bytes > slot_bytes_) return fallback_->Broadcast(data, bytes, root);
  const uint64_t s = ++seq_;
  if (absl::Status st = Wait("Broadcast", false, s - 1, 0, world_ - 1); !st.ok()) return st;
  if (rank_ == root) {
    std::memcpy(slot(root), data, bytes);
  }
  Publish(true, s);
  if (rank_ != root) {
    if (absl::Status st = Wait("Broadcast", true, s, root, root); !st.ok()) return st;
    std::memcpy(data, slot(root), bytes);
  }
  Publish(false, s);
  return absl::OkStatus();
}

absl::Status ShmCommunicator::Barrier() {
  if (!broken_.ok()) return broken_;
  const uint64_t s = ++seq_;
  if (absl::Status st = Wait("Barrier", false, s - 1, 0, world_ - 1); !st.ok()) return st;
  Publish(true, s);
  if (absl::Status st = Wait("Barrier", true, s, 0, world_ - 1); !st.ok()) return st;
  Publish(false, s);
  return absl::OkStatus();
}

}  // namespace tpserve
