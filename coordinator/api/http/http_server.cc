#include "coordinator/api/http/http_server.h"

#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <deque>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace tpserve::api::http {

using json = nlohmann::json;

// What the engine's sink hands to the httplib thread serving one request.
struct HttpServer::Stream {
  absl::Mutex mu;
  absl::CondVar cv;
  std::deque<engine::RequestOutput> queue ABSL_GUARDED_BY(mu);
  bool finished ABSL_GUARDED_BY(mu) = false;   // the last output was queued
  bool delivered ABSL_GUARDED_BY(mu) = false;  // the client got the last output

  // Blocks until an output is queued or `timeout` passes; false on timeout.
  bool Pop(absl::Duration timeout, engine::RequestOutput* out) {
    absl::MutexLock lock(&mu);
    const absl::Time deadline = absl::Now() + timeout;
    while (queue.empty()) {
      if (cv.WaitWithDeadline(&mu, deadline)) break;
    }
    if (queue.empty()) return false;
    *out = std::move(queue.front());
    queue.pop_front();
    return true;
  }
};

namespace {

constexpr absl::Duration kKeepAlive = absl::Seconds(1);

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void SendError(httplib::Response& res, const HttpError& e) {
  if (e.status == 503) res.set_header("Retry-After", "1");
  SendJson(res, e.status, e.body);
}

std::string Sse(const json& data) {
  return absl::StrCat("data: ", data.dump(-1, ' ', false, json::error_handler_t::replace), "\n\n");
}

int64_t Blocks(int64_t tokens, int block_size) {
  return block_size > 0 ? (tokens + block_size - 1) / block_size : 0;
}

}  // namespace

HttpServer::HttpServer(const ServedModel& model, HttpServerOptions options)
    : model_(model),
      options_(std::move(options)),
      server_(std::make_unique<httplib::Server>()),
      metrics_(model.name),
      nonce_(std::random_device{}() * 0x9E3779B97F4A7C15ULL ^ std::random_device{}()),
      created_(absl::ToUnixSeconds(absl::Now())) {
  Routes();
}

HttpServer::~HttpServer() { Stop(); }

HealthVerdict HttpServer::Health() const {
  if (engine_.load() == nullptr) return {false, "the worker group is not loaded yet"};
  if (!options_.health) return {true, ""};
  return options_.health();
}

absl::Status HttpServer::Start(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(host_port.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", host_port, "': expected HOST:PORT, e.g. 0.0.0.0:8000"));
  }
  std::string host = host_port.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const int threads = options_.threads;
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  if (const int ms = options_.tcp_user_timeout_ms; ms > 0) {
    // Set on the listening socket; accepted connections inherit it.
    server_->set_socket_options([ms](socket_t sock) {
      httplib::default_socket_options(sock);
      setsockopt(sock, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
    });
  }
  if (port == 0) {
    port_ = server_->bind_to_any_port(host);
  } else if (server_->bind_to_port(host, port)) {
    port_ = port;
  }
  if (port_ <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", host_port, " (address in use?)"));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

void HttpServer::Routes() {
  httplib::Server& s = *server_;
  s.set_payload_max_length(size_t{64} << 20);
  s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Generate(Endpoint::kCompletions, req, res);
  });
  s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Generate(Endpoint::kChat, req, res);
  });
  auto model_json = [this] {
    const engine::Engine* e = engine_.load();
    return json{{"id", model_.name},
                {"object", "model"},
                {"created", created_},
                {"owned_by", "tpserve"},
                {"root", model_.path},
                {"max_model_len", e != nullptr                  ? e->max_seq_len()
                                  : options_.context_length > 0 ? options_.context_length
                                                                : model_.context_length()}};
  };
  s.Get("/v1/models", [model_json](const httplib::Request&, httplib::Response& res) {
    SendJson(res, 200, {{"object", "list"}, {"data", json::array({model_json()})}});
  });
  s.Get("/v1/models/(.+)", [this, model_json](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] != model_.name) {
      SendError(res, MakeHttpError(404,
                                   absl::StrCat("model '", std::string(req.matches[1]),
                                                "' is not served here; this server serves '",
                                                model_.name, "'"),
                                   "invalid_request_error", "model", "model_not_found"));
      return;
    }
    SendJson(res, 200, model_json());
  });
  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const HealthVerdict health = Health();
    if (health.serving) {
      SendJson(res, 200, {{"status", "ok"}});
      return;
    }
    SendError(res, MakeHttpError(503, health.reason, "service_unavailable", "", "unavailable"));
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.Scrape(engine_.load(), kv_blocks_.load(),
                                    options_.workers_up ? options_.workers_up() : 0),
                    "text/plain; version=0.0.4");
  });
  // httplib leaves the body of its own 404/405 empty: give them OpenAI's error shape.
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string what = absl::StrCat(req.method, " ", req.path);
    SendError(res, res.status == 404
                       ? MakeHttpError(404, absl::StrCat(what, ": no such route"),
                                       "invalid_request_error", "", "not_found")
                       : MakeHttpError(res.status, absl::StrCat(what, ": HTTP ", res.status),
                                       "invalid_request_error", "", ""));
  });
  s.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        SendError(res, MakeHttpError(500, what, "internal_error", "", ""));
      });
}

void HttpServer::Generate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res) {
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    SendError(res, MakeHttpError(400, "body: not valid JSON", "invalid_request_error", "body", ""));
    return;
  }
  engine::Engine* engine = engine_.load();
  if (engine == nullptr) {
    SendError(res, ToHttpError(absl::UnavailableError(
                       "the worker group is not loaded yet (GET /health says 200 when it is); "
                       "retry")));
    return;
  }
  const uint64_t n = next_id_.fetch_add(1);
  absl::StatusOr<OpenAiRequest> parsed = ParseOpenAiRequest(
      model_, endpoint, body, nonce_ ^ (n * 0x9E3779B97F4A7C15ULL), engine->max_seq_len());
  if (!parsed.ok()) {
    SendError(res, ToHttpError(parsed.status()));
    return;
  }
  const int64_t kv_blocks = kv_blocks_.load();
  const int64_t prompt_blocks = Blocks(parsed->options.prompt.size(), options_.kv_block_size);
  if (kv_blocks > 0 && prompt_blocks > kv_blocks) {
    SendError(res, ToHttpError(absl::InvalidArgumentError(
                       absl::StrCat(endpoint == Endpoint::kChat ? "messages" : "prompt", ": ",
                                    parsed->options.prompt.size(), " tokens need ", prompt_blocks,
                                    " KV blocks; the cache has ", kv_blocks))));
    return;
  }
  const std::string id =
      absl::StrFormat("%s-%016x%08x", endpoint == Endpoint::kChat ? "chatcmpl" : "cmpl", nonce_, n);
  const int64_t created = absl::ToUnixSeconds(absl::Now());
  const int num_choices = parsed->options.n;

  auto stream = std::make_shared<Stream>();
  // The sink runs on the engine thread: queue, wake, never block. (Metrics come from the
  // engine's observer, for every API alike.)
  engine::RequestSink sink = [stream](engine::RequestOutput o) {
    absl::MutexLock lock(&stream->mu);
    stream->finished = o.last();
    stream->queue.push_back(std::move(o));
    stream->cv.Signal();
  };
  absl::StatusOr<std::string> submitted = engine->Submit(id, parsed->options, std::move(sink));
  if (!submitted.ok()) {
    SendError(res, ToHttpError(submitted.status()));
    return;
  }

  if (!parsed->stream) {
    std::vector<ChoiceResult> choices(static_cast<size_t>(num_choices));
    engine::Usage usage;
    int ended = 0;
    engine::RequestOutput o;
    while (true) {
      if (!stream->Pop(absl::Hours(1), &o)) continue;
      if (!o.error.ok()) break;
      ChoiceResult& c = choices[static_cast<size_t>(o.index)];
      c.text += o.text;
      c.tokens.insert(c.tokens.end(), o.tokens.begin(), o.tokens.end());
      if (o.finish_reason != engine::FinishReason::kNone) {
        c.finish_reason = o.finish_reason;
        c.stop_reason = o.stop_reason;
        engine::AddCompletionUsage(o.usage, o.index, ended++, usage);
      }
      if (o.last()) break;
    }
    if (!o.error.ok()) {
      SendError(res, ToHttpError(o.error));
      return;
    }
    SendJson(res, 200, CompletionJson(model_, *parsed, id, created, choices, usage));
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Request-Id", id);
  OpenAiRequest request = std::move(*parsed);
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, stream, request, id, created, first = std::vector<bool>(size_t(num_choices), true),
       text_offset = std::vector<int>(size_t(num_choices), 0), usage = engine::Usage{},
       ended = 0](size_t, httplib::DataSink& out) mutable {
        engine::RequestOutput o;
        if (!stream->Pop(kKeepAlive, &o)) {
          // An SSE comment: clients skip it; a closed connection fails the write.
          static constexpr char kPing[] = ": keep-alive\n\n";
          return out.write(kPing, sizeof(kPing) - 1);
        }
        std::string data;
        if (!o.error.ok()) {
          // Headers are gone: the error travels as an event (the openai SDK raises it).
          data = Sse(ToHttpError(o.error).body);
        } else {
          const size_t i = static_cast<size_t>(o.index);
          const bool ends = o.finish_reason != engine::FinishReason::kNone;
          if (!o.text.empty() || !o.tokens.empty() || ends || first[i]) {
            data = Sse(ChunkJson(model_, request, id, created, o, first[i], text_offset[i]));
            first[i] = false;
          }
          for (const engine::TokenOutput& t : o.tokens) text_offset[i] += int(t.text.size());
          if (ends) engine::AddCompletionUsage(o.usage, o.index, ended++, usage);
          if (o.last() && request.include_usage) {
            data += Sse(UsageChunkJson(model_, request, id, created, usage));
          }
        }
        if (o.last()) data += "data: [DONE]\n\n";
        if (!data.empty() && !out.write(data.data(), data.size())) return false;
        if (o.last()) {
          {
            absl::MutexLock lock(&stream->mu);
            stream->delivered = true;
          }
          out.done();
        }
        return true;
      },
      [this, stream, id](bool success) {
        bool delivered;
        {
          absl::MutexLock lock(&stream->mu);
          delivered = stream->delivered || stream->finished;
        }
        // The client went away mid-stream: free its batch slot and KV blocks.
        if (!success && !delivered) {
          if (engine::Engine* e = engine_.load(); e != nullptr) e->Abort(id).IgnoreError();
        }
      });
}

}  // namespace tpserve::api::http
