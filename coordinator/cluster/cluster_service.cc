#include "coordinator/cluster/cluster_service.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tpserve {
namespace {

// absl and gRPC share the canonical status code numbering.
grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

constexpr absl::Duration kCancelPoll = absl::Milliseconds(100);

}  // namespace

WorkerInfo WorkerInfoFromProto(const v1::RegisterRequest& req) {
  WorkerInfo w;
  w.rank = req.rank();
  w.world_size = req.world_size();
  w.incarnation = req.incarnation();
  w.device_kind = req.device().kind();
  w.device_index = req.device().index();
  w.device_name = req.device().name();
  w.compute_dtype = req.device().compute_dtype();
  w.kv_cache_dtype = req.device().kv_cache_dtype();
  w.memory_total_bytes = req.device().memory_total_bytes();
  w.memory_free_bytes = req.device().memory_free_bytes();
  w.memory_budget_bytes = req.memory_budget_bytes();
  w.control_address = req.control_address();
  w.data_host = req.data_host();
  w.data_interface = req.data_interface();
  w.model = req.model();
  w.version = req.version();
  return w;
}

grpc::Status ClusterService::Register(grpc::ServerContext* ctx, const v1::RegisterRequest* req,
                                      v1::RegisterResponse* resp) {
  WorkerInfo info = WorkerInfoFromProto(*req);
  if (info.data_host.empty() && info.data_interface.empty()) {
    // "ipv4:10.1.2.3:5555" / "ipv6:[::1]:5555": the address the worker reached us from.
    const std::string peer = ctx->peer();
    const size_t colon = peer.find(':');
    const size_t last = peer.rfind(':');
    if (colon != std::string::npos && last > colon) {
      std::string host = peer.substr(colon + 1, last - colon - 1);
      if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
      }
      info.data_host = host;
    }
  }
  absl::StatusOr<RegisterOutcome> outcome = registry_.Register(info);
  if (!outcome.ok()) return ToGrpc(outcome.status());
  resp->set_registered(outcome->registered);
  resp->set_world_size(registry_.world_size());
  resp->set_complete(outcome->complete);
  if (on_register_) on_register_(info, *outcome);
  return grpc::Status::OK;
}

grpc::Status ClusterService::StoreSet(grpc::ServerContext*, const v1::StoreSetRequest* req,
                                      v1::StoreSetResponse*) {
  return ToGrpc(store_.Set(req->key(), req->value()));
}

absl::Status ClusterService::WaitCancellable(grpc::ServerContext* ctx,
                                             const std::vector<std::string>& keys,
                                             int64_t timeout_ms) {
  const absl::Duration timeout = std::min(absl::Milliseconds(timeout_ms), max_wait_);
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    absl::Status st =
        store_.Wait(keys, std::max(absl::ZeroDuration(), std::min(left, kCancelPoll)));
    if (st.ok() || st.code() != absl::StatusCode::kDeadlineExceeded) return st;
    if (left <= kCancelPoll) {
      // The store's message names the missing keys; restate it with the caller's timeout.
      return absl::DeadlineExceededError(
          absl::StrCat(st.message(), " (waited ", absl::FormatDuration(timeout), ")"));
    }
    if (ctx->IsCancelled()) return absl::CancelledError("store wait cancelled");
  }
}

grpc::Status ClusterService::StoreGet(grpc::ServerContext* ctx, const v1::StoreGetRequest* req,
                                      v1::StoreGetResponse* resp) {
  if (req->key().empty()) return ToGrpc(absl::InvalidArgumentError("store: empty key"));
  if (req->timeout_ms() < 0) {
    return ToGrpc(absl::InvalidArgumentError("store: negative timeout_ms"));
  }
  if (req->timeout_ms() == 0) {
    absl::StatusOr<bool> set = store_.Check({req->key()});
    if (!set.ok()) return ToGrpc(set.status());
    if (!*set) return ToGrpc(absl::NotFoundError(absl::StrCat("store: key not set: ", req->key())));
  } else {
    absl::Status st = WaitCancellable(ctx, {req->key()}, req->timeout_ms());
    if (!st.ok()) return ToGrpc(st);
  }
  absl::StatusOr<std::string> value = store_.Get(req->key(), absl::ZeroDuration());
  if (!value.ok()) return ToGrpc(value.status());
  resp->set_value(std::move(*value));
  return grpc::Status::OK;
}

grpc::Status ClusterService::StoreCheck(grpc::ServerContext*, const v1::StoreCheckRequest* req,
                                        v1::StoreCheckResponse* resp) {
  bool ready = true;
  for (const std::string& key : req->keys()) {
    absl::StatusOr<bool> set = store_.Check({key});
    if (!set.ok()) return ToGrpc(set.status());
    if (!*set) {
      ready = false;
      resp->add_missing(key);
    }
  }
  resp->set_ready(ready);
  return grpc::Status::OK;
}

grpc::Status ClusterService::StoreWait(grpc::ServerContext* ctx, const v1::StoreWaitRequest* req,
                                       v1::StoreWaitResponse*) {
  if (req->timeout_ms() <= 0) {
    return ToGrpc(absl::InvalidArgumentError("store: StoreWait needs timeout_ms > 0"));
  }
  const std::vector<std::string> keys(req->keys().begin(), req->keys().end());
  return ToGrpc(WaitCancellable(ctx, keys, req->timeout_ms()));
}

}  // namespace tpserve
