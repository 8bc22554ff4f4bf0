#include "coordinator/cluster/rendezvous_client.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "tpserve/v1/worker.grpc.pb.h"

namespace tpserve {
namespace {

class RendezvousClient final : public KvStore {
 public:
  RendezvousClient(std::string address, const RendezvousClientOptions& options)
      : address_(std::move(address)),
        options_(options),
        stub_(v1::Cluster::NewStub(
            grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()))) {}

  absl::Status Set(const std::string& key, std::string value) override {
    v1::StoreSetRequest req;
    req.set_key(key);
    req.set_value(std::move(value));
    v1::StoreSetResponse resp;
    grpc::ClientContext ctx;
    Prepare(ctx, options_.rpc_timeout);
    return FromGrpc("StoreSet", key, stub_->StoreSet(&ctx, req, &resp));
  }

  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override {
    v1::StoreGetRequest req;
    req.set_key(key);
    // At least 1 ms: the service answers NOT_FOUND to 0, the KvStore contract DEADLINE_EXCEEDED.
    req.set_timeout_ms(std::max<int64_t>(1, absl::ToInt64Milliseconds(timeout)));
    v1::StoreGetResponse resp;
    grpc::ClientContext ctx;
    Prepare(ctx, timeout + options_.rpc_timeout);
    absl::Status st = FromGrpc("StoreGet", key, stub_->StoreGet(&ctx, req, &resp));
    if (!st.ok()) return st;
    return std::move(*resp.mutable_value());
  }

  absl::StatusOr<bool> Check(const std::vector<std::string>& keys) override {
    v1::StoreCheckRequest req;
    for (const std::string& k : keys) req.add_keys(k);
    v1::StoreCheckResponse resp;
    grpc::ClientContext ctx;
    Prepare(ctx, options_.rpc_timeout);
    absl::Status st = FromGrpc("StoreCheck", Describe(keys), stub_->StoreCheck(&ctx, req, &resp));
    if (!st.ok()) return st;
    return resp.ready();
  }

  absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) override {
    v1::StoreWaitRequest req;
    for (const std::string& k : keys) req.add_keys(k);
    // The service needs a positive wait; a zero timeout means "already set?".
    req.set_timeout_ms(std::max<int64_t>(1, absl::ToInt64Milliseconds(timeout)));
    v1::StoreWaitResponse resp;
    grpc::ClientContext ctx;
    Prepare(ctx, timeout + options_.rpc_timeout);
    return FromGrpc("StoreWait", Describe(keys), stub_->StoreWait(&ctx, req, &resp));
  }

 private:
  // Waits for the channel to come up (the coordinator may start later) within the connect
  // timeout; the whole call is bounded by connect timeout + `budget`.
  void Prepare(grpc::ClientContext& ctx, absl::Duration budget) const {
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.connect_timeout + budget));
  }

  static std::string Describe(const std::vector<std::string>& keys) {
    return keys.size() == 1 ? keys[0] : absl::StrCat(keys.size(), " keys");
  }

  absl::Status FromGrpc(const char* call, const std::string& what, const grpc::Status& st) const {
    if (st.ok()) return absl::OkStatus();
    if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
        (st.error_message().empty() || st.error_message() == "Deadline Exceeded")) {
      // gRPC's own deadline (the store's timeouts carry their own message): the coordinator
      // was unreachable or stopped answering.
      return absl::UnavailableError(absl::StrCat("rendezvous store at ", address_, ": ", call, "(",
                                                 what, ") got no answer in time"));
    }
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                        absl::StrCat("rendezvous store at ", address_, ": ", call, "(", what,
                                     "): ", st.error_message()));
  }

  const std::string address_;
  const RendezvousClientOptions options_;
  std::unique_ptr<v1::Cluster::Stub> stub_;
};

}  // namespace

std::unique_ptr<KvStore> MakeRendezvousClient(const std::string& address,
                                              const RendezvousClientOptions& options) {
  return std::make_unique<RendezvousClient>(address, options);
}

}  // namespace tpserve
