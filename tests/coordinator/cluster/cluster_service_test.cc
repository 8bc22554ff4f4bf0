// The Cluster service over a real gRPC channel on loopback: the rendezvous store through the
// workers' client, and registration errors as gRPC status codes.
#include "coordinator/cluster/cluster_service.h"

#include <thread>

#include "absl/time/clock.h"
#include "coordinator/cluster/cluster_server.h"
#include "coordinator/cluster/rendezvous_client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace tpserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ClusterServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ClusterServer>> server =
        ClusterServer::Start("127.0.0.1:0", registry_, store_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    client_ = MakeRendezvousClient(server_->address());
    stub_ = v1::Cluster::NewStub(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }

  v1::RegisterRequest Request(int rank, const std::string& incarnation) {
    v1::RegisterRequest req;
    req.set_rank(rank);
    req.set_world_size(2);
    req.set_incarnation(incarnation);
    req.mutable_device()->set_kind("cpu");
    req.set_control_address("127.0.0.1:9" + std::to_string(rank));
    return req;
  }

  WorkerRegistry registry_{2, "model.gguf", ""};
  InMemoryKvStore store_;
  std::unique_ptr<ClusterServer> server_;
  std::unique_ptr<KvStore> client_;
  std::unique_ptr<v1::Cluster::Stub> stub_;
};

TEST_F(ClusterServiceTest, StoreRoundTripThroughTheClient) {
  const std::string binary("\x00\x01\xff", 3);
  ASSERT_TRUE(client_->Set("g1/addr/0", binary).ok());
  absl::StatusOr<std::string> v = client_->Get("g1/addr/0", absl::Seconds(1));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, binary);
  EXPECT_EQ(*store_.Get("g1/addr/0", absl::ZeroDuration()), binary);  // lands in the store
  EXPECT_EQ(*client_->Check({"g1/addr/0"}), true);
  EXPECT_EQ(*client_->Check({"g1/addr/0", "g1/addr/1"}), false);
  EXPECT_TRUE(client_->Wait({"g1/addr/0"}, absl::Seconds(1)).ok());
}

TEST_F(ClusterServiceTest, GetWaitsForAnotherClientsSet) {
  std::thread other([&]() {
    absl::SleepFor(absl::Milliseconds(200));
    std::unique_ptr<KvStore> second = MakeRendezvousClient(server_->address());
    ASSERT_TRUE(second->Set("late", "here").ok());
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> v = client_->Get("late", absl::Seconds(20));
  other.join();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, "here");
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST_F(ClusterServiceTest, MissingKeysTimeOutNamingThem) {
  absl::Status st = client_->Wait({"a/0", "a/1"}, absl::Milliseconds(300));
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("a/0, a/1"));
  EXPECT_THAT(std::string(st.message()), HasSubstr(server_->address()));

  absl::StatusOr<std::string> get = client_->Get("nothing", absl::Milliseconds(200));
  EXPECT_EQ(get.status().code(), absl::StatusCode::kDeadlineExceeded) << get.status();
  // Same contract as InMemoryKvStore for a zero timeout.
  get = client_->Get("nothing", absl::ZeroDuration());
  EXPECT_EQ(get.status().code(), absl::StatusCode::kDeadlineExceeded) << get.status();

  // Without waiting the answer is NOT_FOUND, straight from the service.
  v1::StoreGetRequest req;
  req.set_key("nothing");
  v1::StoreGetResponse resp;
  grpc::ClientContext ctx;
  grpc::Status g = stub_->StoreGet(&ctx, req, &resp);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ClusterServiceTest, StoreCheckListsMissingKeys) {
  ASSERT_TRUE(client_->Set("k1", "").ok());
  v1::StoreCheckRequest req;
  for (const char* k : {"k0", "k1", "k2"}) req.add_keys(k);
  v1::StoreCheckResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->StoreCheck(&ctx, req, &resp).ok());
  EXPECT_FALSE(resp.ready());
  EXPECT_THAT(resp.missing(), ElementsAre("k0", "k2"));
}

TEST_F(ClusterServiceTest, RegisterFillsTheRegistry) {
  v1::RegisterResponse resp;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Register(&ctx, Request(1, "w1"), &resp).ok());
    EXPECT_EQ(resp.registered(), 1);
    EXPECT_FALSE(resp.complete());
  }
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Register(&ctx, Request(0, "w0"), &resp).ok());
    EXPECT_EQ(resp.registered(), 2);
    EXPECT_EQ(resp.world_size(), 2);
    EXPECT_TRUE(resp.complete());
  }
  EXPECT_TRUE(registry_.complete());
  // No data host given: the address the worker connected from.
  EXPECT_EQ(registry_.worker(0)->data_host, "127.0.0.1");
  EXPECT_EQ(registry_.worker(1)->control_address, "127.0.0.1:91");
}

TEST_F(ClusterServiceTest, RegisterErrorsAreStatusCodes) {
  grpc::ClientContext c1;
  v1::RegisterResponse resp;
  ASSERT_TRUE(stub_->Register(&c1, Request(0, "w0"), &resp).ok());

  grpc::ClientContext c2;
  grpc::Status dup = stub_->Register(&c2, Request(0, "other"), &resp);
  EXPECT_EQ(dup.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(dup.error_message(), HasSubstr("rank 0 is already held"));

  grpc::ClientContext c3;
  grpc::Status range = stub_->Register(&c3, Request(5, "w5"), &resp);
  EXPECT_EQ(range.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(range.error_message(), HasSubstr("rank 5 is outside this group of 2 ranks"));

  grpc::ClientContext c4;
  v1::RegisterRequest wrong_model = Request(1, "w1");
  wrong_model.set_model("other.gguf");
  grpc::Status model = stub_->Register(&c4, wrong_model, &resp);
  EXPECT_EQ(model.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(model.error_message(), HasSubstr("other.gguf"));
}

TEST(RendezvousClientTest, UnreachableCoordinatorIsUnavailable) {
  // Port 1 on loopback: nothing listens there.
  RendezvousClientOptions opts;
  opts.connect_timeout = absl::Milliseconds(300);
  opts.rpc_timeout = absl::Milliseconds(200);
  std::unique_ptr<KvStore> client = MakeRendezvousClient("127.0.0.1:1", opts);
  const absl::Time start = absl::Now();
  absl::Status st = client->Set("k", "v");
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("127.0.0.1:1"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

}  // namespace
}  // namespace tpserve
