// The OpenAI-compatible HTTP API and Prometheus /metrics of the coordinator (cpp-httplib):
//
//   POST /v1/completions, POST /v1/chat/completions   (stream: true -> SSE chunks, data: [DONE])
//   GET  /v1/models, /v1/models/{id}, /health (200 only while serving, else 503 with the
//        reason), /metrics
//
// `n` completions per request come back as choices with their `index` (streamed interleaved);
// usage sums the completions' tokens, as OpenAI does.
// Each request is submitted to the same Engine the gRPC service uses; the engine's sink queues
// outputs and wakes the httplib worker thread that owns the request (the sink never blocks).
// A streaming client that disconnects aborts its request: the next SSE write fails (a comment
// line is written every second while no tokens come, so a request waiting in the queue notices
// too) and the content provider's releaser calls Engine::Abort. Non-streamed requests run to the
// end (their status line is only known then).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "coordinator/api/health.h"
#include "coordinator/api/http/metrics.h"
#include "coordinator/api/http/openai_convert.h"
#include "coordinator/api/served_model.h"
#include "coordinator/engine/engine.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace tpserve::api::http {

struct HttpServerOptions {
  // httplib worker threads: each open request (a stream, a waiting non-streamed call) holds one.
  int threads = 64;
  int kv_block_size = 16;  // for the prompt-fits check
  // Context length served before the engine exists (0: the model's); then the engine's longest
  // sequence, as ModelInfo.context_length.
  int context_length = 0;
  // The coordinator's health verdict (/health); null: serving whenever the engine is set.
  std::function<HealthVerdict()> health;
  std::function<int()> workers_up;  // ranks registered (tpserve_workers_up); null: 0
  // TCP_USER_TIMEOUT of the connections: how long sent data may go unacknowledged before the
  // connection is dropped (a client cut off without a reset; its stream then ends at the next
  // write and its request is aborted). 0: the kernel's default (~15 minutes of retransmissions).
  int tcp_user_timeout_ms = 0;
};

class HttpServer {
 public:
  HttpServer(const ServedModel& model, HttpServerOptions options);
  ~HttpServer();  // Stop()

  // Binds HOST:PORT (port 0 picks one; see port()) and serves on a thread of its own.
  // INVALID_ARGUMENT for a malformed address, UNAVAILABLE when the port cannot be bound.
  absl::Status Start(const std::string& host_port);
  int port() const { return port_; }
  // Stops accepting, waits for the requests in progress (call Engine::Stop first so streams end)
  // and joins the threads.
  void Stop();

  // The engine exists once the workers are loaded; until then the generation routes answer 503.
  // Reset it to null before the engine goes away.
  void set_engine(engine::Engine* engine, int64_t kv_blocks) {
    kv_blocks_.store(kv_blocks);
    engine_.store(engine);
  }
  // Give it to Engine::Create: /metrics then counts every request the engine serves (gRPC too).
  engine::EngineObserver* observer() { return &metrics_; }

 private:
  struct Stream;
  void Routes();
  void Generate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res);
  HealthVerdict Health() const;

  const ServedModel& model_;
  const HttpServerOptions options_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  ServerMetrics metrics_;
  std::atomic<engine::Engine*> engine_{nullptr};
  std::atomic<int64_t> kv_blocks_{0};
  std::atomic<uint64_t> next_id_{0};
  const uint64_t nonce_;
  const int64_t created_;
};

}  // namespace tpserve::api::http
