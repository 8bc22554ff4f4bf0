#include "tools/client.h"

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <utility>

#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "tpserve/v1/inference.grpc.pb.h"

namespace tpserve {
namespace {

struct Streamed {
  std::string text;
  v1::GenerateResponse last;
  grpc::Status status;
};

void FillOptions(const ClientOptions& o, v1::GenerateRequest* req) {
  v1::SamplingParams* s = req->mutable_sampling();
  s->set_temperature(o.temperature);
  if (o.top_k > 0) s->set_top_k(o.top_k);
  if (o.top_p < 1.0f) s->set_top_p(o.top_p);
  if (o.min_p > 0.0f) s->set_min_p(o.min_p);
  if (o.has_seed) s->set_seed(o.seed);
  if (o.max_tokens >= 0) req->mutable_stopping()->set_max_tokens(o.max_tokens);
  req->mutable_stopping()->set_ignore_eos(o.ignore_eos);
}

// Runs one Generate call, printing text deltas as they arrive.
Streamed Stream(v1::Inference::Stub& stub, const v1::GenerateRequest& req, int timeout_s) {
  Streamed out;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(timeout_s)));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub.Generate(&ctx, req);
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    std::fwrite(resp.text().data(), 1, resp.text().size(), stdout);
    std::fflush(stdout);
    out.text += resp.text();
    if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) out.last = resp;
  }
  out.status = reader->Finish();
  return out;
}

void PrintUsage(const v1::GenerateResponse& last) {
  const v1::Usage& u = last.usage();
  const double decode_ms = u.total_time_ms() - u.time_to_first_token_ms();
  std::fprintf(stderr,
               "[%s; %d prompt tokens (%d cached), %d generated; first token %.1f ms, "
               "%.1f tok/s after it]\n",
               v1::FinishReason_Name(last.finish_reason()).c_str(), u.prompt_tokens(),
               u.cached_prompt_tokens(), u.completion_tokens(), u.time_to_first_token_ms(),
               u.completion_tokens() > 1 && decode_ms > 0
                   ? (u.completion_tokens() - 1) / (decode_ms / 1000.0)
                   : 0.0);
}

int ReportError(const grpc::Status& st) {
  std::fprintf(stderr, "\ntpserve: server error %d: %s\n", static_cast<int>(st.error_code()),
               st.error_message().c_str());
  return 1;
}

std::unique_ptr<v1::Inference::Stub> Connect(const std::string& server) {
  return v1::Inference::NewStub(grpc::CreateChannel(server, grpc::InsecureChannelCredentials()));
}

}  // namespace

int RunGenerateClient(const ClientOptions& o) {
  auto stub = Connect(o.server);
  v1::GenerateRequest req;
  if (!o.prompt_ids.empty()) {
    req.mutable_prompt()->mutable_tokens()->mutable_ids()->Add(o.prompt_ids.begin(),
                                                               o.prompt_ids.end());
  } else if (o.chat) {
    v1::Chat* chat = req.mutable_prompt()->mutable_chat();
    if (!o.system.empty()) {
      v1::ChatMessage* m = chat->add_messages();
      m->set_role("system");
      m->set_content(o.system);
    }
    v1::ChatMessage* m = chat->add_messages();
    m->set_role("user");
    m->set_content(o.prompt);
  } else {
    req.mutable_prompt()->set_text(o.prompt);
  }
  FillOptions(o, &req);
  Streamed s = Stream(*stub, req, o.timeout_s);
  std::printf("\n");
  std::fflush(stdout);  // the text's end before the usage line on stderr, also through a pipe
  if (!s.status.ok()) return ReportError(s.status);
  PrintUsage(s.last);
  return 0;
}

int RunChatClient(const ClientOptions& o) {
  auto stub = Connect(o.server);
  std::vector<std::pair<std::string, std::string>> history;
  if (!o.system.empty()) history.emplace_back("system", o.system);
  std::fprintf(stderr, "chat with %s: type a message; /reset forgets, /quit (or Ctrl-D) ends\n",
               o.server.c_str());
  std::string line;
  while (true) {
    std::fprintf(stdout, "> ");
    std::fflush(stdout);
    if (!std::getline(std::cin, line) || line == "/quit") break;
    if (line.empty()) continue;
    if (line == "/reset") {
      history.clear();
      if (!o.system.empty()) history.emplace_back("system", o.system);
      continue;
    }
    history.emplace_back("user", line);
    v1::GenerateRequest req;
    v1::Chat* chat = req.mutable_prompt()->mutable_chat();
    for (const auto& [role, content] : history) {
      v1::ChatMessage* m = chat->add_messages();
      m->set_role(role);
      m->set_content(content);
    }
    FillOptions(o, &req);
    Streamed s = Stream(*stub, req, o.timeout_s);
    std::printf("\n");
    std::fflush(stdout);
    if (!s.status.ok()) {
      ReportError(s.status);
      history.pop_back();
      continue;
    }
    PrintUsage(s.last);
    history.emplace_back("assistant", s.text);
  }
  std::printf("\n");
  return 0;
}

}  // namespace tpserve
