// What a worker computes on (tpserve-worker --device / --dtype / --collectives): the backend, a
// description for Register (worker.proto DeviceInfo), the dtypes it accepts, the memory it may
// size its KV pool from, and how its collectives reach the other ranks (DESIGN.md §6):
//
//   device  collectives  communicator for a group of N ranks
//   cpu     gloo         Gloo over TCP (N == 1: Local)
//   cuda:K  gloo         Gloo staged through host memory (TP > 1 on one GPU; N == 1: Local)
//   cuda:K  nccl         NCCL on GPU K, unique id through the coordinator's store (also N == 1)
//
// A LoadModel asking for KIND_NCCL gets NCCL on a CUDA device whatever --collectives says, and
// UNIMPLEMENTED on a CPU one. Plain C++: no gRPC, no CUDA types in this header.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/backend/backend.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/parallel/communicator.h"
#include "worker/parallel/kv_store.h"

namespace tpserve {

struct DeviceOptions {
  std::string device = "cpu";  // "cpu" or "cuda:K" ("cuda" = cuda:0)
  // "" (the device's default: cpu int8 where the build has the VNNI kernel, else fp32; cuda
  // bf16), fp32, int8 (cpu), bf16 (cuda)
  std::string dtype;
  std::string collectives = "gloo";  // "gloo" or "nccl" (CUDA only)
  int threads = 0;                   // CPU backend threads; 0: all hardware threads
  // KV cache element type: "" / "auto" (cpu: fp16 with int8x2 / int8, fp32 with fp32; cuda:
  // fp32), fp16 (cpu), fp32
  std::string kv_cache_dtype;
  // cuda: decode steps of up to this many sequences run as recorded CUDA graphs (0: op by op).
  int64_t cuda_graph_max_batch = 64;
};

// worker.proto DeviceInfo without the proto type.
struct DeviceDescription {
  std::string kind = "cpu";  // "cpu" | "cuda"
  int index = 0;             // CUDA ordinal; 0 for CPU
  std::string name;          // "NVIDIA H200", the CPU model
  int64_t memory_total_bytes = 0;
  int64_t memory_free_bytes = 0;
  int compute_units = 0;       // CPU threads or CUDA SMs
  int compute_capability = 0;  // major * 10 + minor; 0 for CPU
  std::string compute_dtype;   // "int8x2", "int8", "f32" (cpu); "bf16", "f32" (cuda)
  std::string kv_cache_dtype;  // "fp16", "fp32", "int8"
};

// The group a LoadModel connects (LoadSpec's communicator, plus how to reach the store).
struct ConnectRequest {
  int rank = 0;
  int world_size = 1;
  bool nccl_requested = false;  // LoadModel said KIND_NCCL
  std::string store_prefix;
  absl::Duration timeout = absl::Seconds(30);
  // Makes the host Gloo communicator of this group (the engine knows the data-plane address).
  std::function<absl::StatusOr<std::unique_ptr<Communicator>>()> make_gloo;
  // Makes a client of the coordinator's rendezvous store (NCCL's unique id goes through it).
  std::function<std::unique_ptr<KvStore>()> make_store;
};

class WorkerDevice {
 public:
  virtual ~WorkerDevice() = default;

  virtual Backend& backend() = 0;
  virtual DeviceDescription Describe() const = 0;
  // "cpu fp32", "cuda:1 bf16, collectives nccl": for logs.
  virtual std::string Summary() const = 0;
  // OK when LoadModel's dtype ("" = the device's default; f32/fp32/float32, int8, bf16) is
  // what this device computes in; INVALID_ARGUMENT saying what it computes in otherwise.
  virtual absl::Status CheckDtype(const std::string& dtype) const = 0;
  // Free device memory now, in bytes, when the device has its own (CUDA); nullopt for host
  // memory (the engine then uses its host default).
  virtual std::optional<int64_t> FreeDeviceBytes() const = 0;
  // The data plane of one generation (see the table above).
  virtual absl::StatusOr<std::unique_ptr<Communicator>> Connect(const ConnectRequest& request) = 0;
};

// Opens the device `options` name. Errors a user can act on, with exit code 2 in tpserve-worker:
//   INVALID_ARGUMENT     bad --device / --dtype / --collectives spelling, a GPU ordinal the
//                        machine lacks, bf16 or nccl on the CPU
//   FAILED_PRECONDITION  "no NVIDIA driver: cudaGetDeviceCount returned 35 ..." and other
//                        unusable-GPU cases; "built without CUDA" in a CPU-only build
absl::StatusOr<std::unique_ptr<WorkerDevice>> OpenDevice(const DeviceOptions& options);

// The CPU device (cannot fail).
std::unique_ptr<WorkerDevice> OpenCpuDevice(int threads,
                                            CpuPrecision precision = CpuPrecision::kDefault,
                                            std::optional<KvDType> kv_dtype = std::nullopt);

// Whether this binary has the CUDA backend / the NCCL communicator compiled in.
bool BuiltWithCuda();
bool BuiltWithNccl();

}  // namespace tpserve
