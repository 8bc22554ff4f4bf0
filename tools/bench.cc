#include "tools/bench.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "grpc/grpc.h"
#include "grpcpp/grpcpp.h"
#include "tools/bench_report.h"
#include "tools/bench_stats.h"
#include "tpserve/v1/inference.grpc.pb.h"

namespace tpserve {
namespace {

using Clock = std::chrono::steady_clock;
using bench::RequestRecord;

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

std::atomic<bool> g_interrupted{false};
void OnInterrupt(int) { g_interrupted.store(true); }

// User + system CPU seconds of this process so far.
double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto secs = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return secs(u.ru_utime) + secs(u.ru_stime);
}

template <typename Rpc>
grpc::Status Unary(Rpc rpc, absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return rpc(&ctx);
}

class Runner;

// One streaming Generate call; deletes itself when the call ends.
class Call : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  Call(Runner* runner, v1::GenerateRequest request, int timeout_s) : runner_(runner) {
    request_ = std::move(request);
    record_.prompt_tokens = request_.prompt().tokens().ids_size();
    ctx_.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(timeout_s)));
  }
  void Start(v1::Inference::Stub* stub) {
    stub->async()->Generate(&ctx_, &request_, this);
    StartRead(&response_);
    start_ = last_ = Clock::now();
    StartCall();
  }
  void Cancel() { ctx_.TryCancel(); }
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  Runner* runner_;
  grpc::ClientContext ctx_;
  v1::GenerateRequest request_;
  v1::GenerateResponse response_;
  Clock::time_point start_, last_;
  RequestRecord record_;
};

// Launches calls per the load shape, collects their records, polls the server's stats and
// prints progress, one phase (warm-up or measured) at a time.
class Runner {
 public:
  Runner(const BenchOptions& o, std::vector<std::unique_ptr<v1::Inference::Stub>> stubs,
         const v1::ModelInfo& info, bench::PromptMaker prompts, bench::LengthDist in,
         bench::LengthDist out)
      : o_(o),
        stubs_(std::move(stubs)),
        info_(info),
        prompts_(std::move(prompts)),
        in_(in),
        out_(out),
        len_rng_(o.seed + 1),
        arrival_rng_(o.seed + 2),
        tty_(isatty(STDERR_FILENO) != 0) {}

  struct Phase {
    std::vector<RequestRecord> records;
    std::vector<bench::LoadSample> samples;
    bench::ServerTotals before, after;
    double duration_s = 0;
    double cpu_s = 0;
  };

  // Runs `count` requests (0: no cap) or for `duration_s` (0: no limit), whichever ends first,
  // and waits for the ones in flight. Returns what the phase saw.
  Phase Run(const std::string& name, int64_t count, double duration_s);

  // From gRPC threads.
  void Finished(Call* call, RequestRecord record);
  // After the call object is gone: the phase ends only when no call is left at all.
  void Released() {
    std::lock_guard<std::mutex> lock(mu_);
    --alive_;
    cv_.notify_all();
  }
  void AddTokens(int n) { streamed_tokens_.fetch_add(n, std::memory_order_relaxed); }

  absl::StatusOr<v1::ServerStats> Stats() {
    v1::ServerStats s;
    grpc::Status st = Unary(
        [&](grpc::ClientContext* c) {
          return stubs_[0]->GetServerStats(c, v1::GetServerStatsRequest(), &s);
        },
        absl::Seconds(1));
    if (!st.ok()) return absl::UnavailableError(st.error_message());
    return s;
  }

 private:
  v1::GenerateRequest NextRequest();
  void Poll(const std::string& name, int64_t count, Clock::time_point start);
  static bench::ServerTotals Totals(const absl::StatusOr<v1::ServerStats>& s);

  const BenchOptions& o_;
  std::vector<std::unique_ptr<v1::Inference::Stub>> stubs_;
  const v1::ModelInfo& info_;
  bench::PromptMaker prompts_;
  bench::LengthDist in_, out_;
  std::mt19937_64 len_rng_, arrival_rng_;
  const bool tty_;
  int64_t next_index_ = 0;
  bool warned_context_ = false;
  std::atomic<int64_t> streamed_tokens_{0};
  std::atomic<bool> polling_{false};

  std::mutex mu_;
  std::condition_variable cv_;
  std::set<Call*> live_;  // guarded by mu_: started, OnDone not reached yet
  int64_t alive_ = 0;     // guarded by mu_: started, not deleted yet
  int64_t failed_ = 0;    // guarded by mu_
  std::vector<RequestRecord> records_;
  std::vector<bench::LoadSample> samples_;
  Clock::time_point last_done_;
};

void Call::OnReadDone(bool ok) {
  if (!ok) return;  // the stream ended; OnDone follows
  const int n = response_.tokens_size();
  if (n > 0) {
    const Clock::time_point now = Clock::now();
    if (record_.ttft_ms < 0) {
      record_.ttft_ms = MsBetween(start_, now);
    } else {
      record_.itl.push_back(MsBetween(last_, now));
    }
    last_ = now;
    record_.output_tokens += n;
    runner_->AddTokens(n);
  }
  if (response_.has_usage() && response_.usage().prompt_tokens() > 0) {
    record_.prompt_tokens = response_.usage().prompt_tokens();
  }
  StartRead(&response_);
}

void Call::OnDone(const grpc::Status& status) {
  record_.e2e_ms = MsBetween(start_, Clock::now());
  record_.code = static_cast<int>(status.error_code());
  Runner* runner = runner_;
  runner->Finished(this, std::move(record_));
  delete this;  // ends the call's ClientContext
  runner->Released();
}

void Runner::Finished(Call* call, RequestRecord record) {
  std::lock_guard<std::mutex> lock(mu_);
  live_.erase(call);
  if (record.code != 0) ++failed_;
  records_.push_back(std::move(record));
  last_done_ = Clock::now();
  cv_.notify_all();
}

v1::GenerateRequest Runner::NextRequest() {
  const int64_t index = next_index_++;
  int in = bench::SampleLength(in_, len_rng_);
  int out = bench::SampleLength(out_, len_rng_);
  // prompt + output must fit the context (else the server answers INVALID_ARGUMENT).
  const int ctx = info_.context_length();
  if (ctx > 1 && in + out > ctx) {
    out = std::min(out, ctx - 1);
    in = std::max(1, ctx - out);
    if (!warned_context_) {
      std::fprintf(stderr, "bench: prompt + output past the context (%d); prompts shortened\n",
                   ctx);
      warned_context_ = true;
    }
  }
  v1::GenerateRequest req;
  req.set_request_id(absl::StrCat("bench-", o_.seed, "-", index));
  std::vector<int32_t> ids = prompts_.Make(index, in);
  req.mutable_prompt()->mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  // Unset temperature would mean the model's default: greedy must be asked for.
  req.mutable_sampling()->set_temperature(o_.temperature);
  if (o_.temperature > 0) req.mutable_sampling()->set_seed(o_.seed + static_cast<uint64_t>(index));
  req.mutable_stopping()->set_max_tokens(out);
  req.mutable_stopping()->set_ignore_eos(true);
  return req;
}

bench::ServerTotals Runner::Totals(const absl::StatusOr<v1::ServerStats>& s) {
  bench::ServerTotals t;
  if (!s.ok()) return t;
  t.preemptions = s->preemptions();
  t.prefix_cache_hit_tokens = s->prefix_cache_hit_tokens();
  t.prompt_tokens = s->prompt_tokens();
  t.generation_tokens = s->generation_tokens();
  t.steps = s->steps();
  const double n = static_cast<double>(s->steps());
  t.step_ms_sum = s->mean_step_ms() * n;
  t.compute_ms_sum = s->mean_compute_ms() * n;
  t.collective_ms_sum = s->mean_collective_ms() * n;
  return t;
}

// Every ~250 ms: a GetServerStats sample; every second on a terminal (5 s otherwise): progress.
void Runner::Poll(const std::string& name, int64_t count, Clock::time_point start) {
  Clock::time_point next_print = start + std::chrono::seconds(tty_ ? 1 : 5);
  while (polling_.load()) {
    const Clock::time_point tick = Clock::now();
    absl::StatusOr<v1::ServerStats> s = Stats();
    bench::LoadSample sample;
    if (s.ok()) {
      sample = {s->running(), s->waiting(), s->kv_usage()};
    }
    int64_t done, failed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (s.ok()) samples_.push_back(sample);
      done = static_cast<int64_t>(records_.size());
      failed = failed_;
    }
    const Clock::time_point now = Clock::now();
    if (!o_.quiet && now >= next_print) {
      next_print = now + std::chrono::seconds(tty_ ? 1 : 5);
      const double secs = std::max(1e-3, MsBetween(start, now) / 1000);
      const std::string total = count > 0 ? absl::StrCat("/", count) : "";
      std::string line =
          absl::StrFormat("%s: %d%s done (%d failed), %.2f req/s, %.1f output tok/s", name, done,
                          total, failed, done / secs, streamed_tokens_.load() / secs);
      if (s.ok()) {
        absl::StrAppendFormat(&line, ", server running %d waiting %d, KV %.1f%%", s->running(),
                              s->waiting(), 100 * s->kv_usage());
      } else {
        absl::StrAppend(&line, ", server stats unavailable");
      }
      std::fprintf(stderr, tty_ ? "\r%s\033[K" : "%s\n", line.c_str());
      std::fflush(stderr);
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_until(lock, tick + std::chrono::milliseconds(250), [&] { return !polling_.load(); });
  }
  if (!o_.quiet && tty_) std::fprintf(stderr, "\n");
}

Runner::Phase Runner::Run(const std::string& name, int64_t count, double duration_s) {
  Phase phase;
  {
    std::lock_guard<std::mutex> lock(mu_);
    records_.clear();
    samples_.clear();
    failed_ = 0;
  }
  streamed_tokens_.store(0);
  phase.before = Totals(Stats());
  const double cpu0 = CpuSeconds();
  const Clock::time_point start = Clock::now();
  last_done_ = start;
  const Clock::time_point deadline =
      duration_s > 0 ? start + std::chrono::microseconds(static_cast<int64_t>(duration_s * 1e6))
                     : Clock::time_point::max();
  polling_.store(true);
  std::thread poller([&] { Poll(name, count, start); });

  const int limit = o_.rate > 0 ? o_.max_concurrency : o_.concurrency;
  Clock::time_point next_arrival = start;
  int64_t launched = 0;
  auto stop = [&] {
    return g_interrupted.load() || (count > 0 && launched >= count) || Clock::now() >= deadline;
  };
  while (!stop()) {
    std::unique_lock<std::mutex> lock(mu_);
    if (o_.rate > 0) {
      next_arrival += std::chrono::microseconds(
          static_cast<int64_t>(bench::NextArrivalGap(o_.rate, arrival_rng_) * 1e6));
      // Woken every 100 ms to notice Ctrl-C (a signal handler cannot notify a condition).
      while (!g_interrupted.load() && Clock::now() < std::min(next_arrival, deadline)) {
        cv_.wait_until(lock, std::min({next_arrival, deadline,
                                       Clock::now() + std::chrono::milliseconds(100)}));
      }
    }
    while (!g_interrupted.load() && static_cast<int>(live_.size()) >= limit &&
           Clock::now() < deadline) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
    }
    if (g_interrupted.load() || Clock::now() >= deadline) break;
    Call* call = new Call(this, NextRequest(), o_.timeout_s);
    live_.insert(call);
    ++alive_;
    lock.unlock();
    call->Start(stubs_[static_cast<size_t>(launched) % stubs_.size()].get());
    ++launched;
  }
  {
    std::unique_lock<std::mutex> lock(mu_);
    bool cancelled = false;
    while (alive_ > 0) {
      if (g_interrupted.load() && !cancelled) {
        for (Call* c : live_) c->Cancel();
        cancelled = true;
      }
      cv_.wait_for(lock, std::chrono::milliseconds(100));
    }
  }
  polling_.store(false);
  cv_.notify_all();
  poller.join();
  phase.cpu_s = CpuSeconds() - cpu0;
  phase.after = Totals(Stats());
  std::lock_guard<std::mutex> lock(mu_);
  phase.duration_s = MsBetween(start, last_done_) / 1000;
  phase.records = std::move(records_);
  phase.samples = std::move(samples_);
  return phase;
}

// Ids the model treats as special (detokenizing them with and without skip_special_tokens
// differs), so that prompts hold ordinary tokens only.
std::vector<int32_t> SpecialIds(v1::Inference::Stub& stub, int32_t vocab_size) {
  auto text = [&](int32_t begin, int32_t end, bool skip, std::string* out) {
    v1::DetokenizeRequest req;
    for (int32_t id = begin; id < end; ++id) req.add_ids(id);
    req.set_skip_special_tokens(skip);
    v1::DetokenizeResponse resp;
    grpc::Status st = Unary([&](grpc::ClientContext* c) { return stub.Detokenize(c, req, &resp); },
                            absl::Seconds(5));
    *out = resp.text();
    return st.ok();
  };
  bool failed = false;
  std::vector<int32_t> ids =
      bench::FindSpecialIds(vocab_size, 1024, [&](int32_t begin, int32_t end) {
        std::string with, without;
        if (!text(begin, end, false, &with) || !text(begin, end, true, &without)) {
          failed = true;
          return false;
        }
        return with != without;
      });
  if (failed) std::fprintf(stderr, "bench: Detokenize failed; special ids may be in prompts\n");
  return ids;
}

std::string LoadText(const BenchOptions& o, int64_t requests) {
  std::string shape = o.rate > 0
                          ? absl::StrFormat("open loop, Poisson %.2f req/s, max concurrency %d",
                                            o.rate, o.max_concurrency)
                          : absl::StrFormat("closed loop, concurrency %d", o.concurrency);
  absl::StrAppend(&shape, ", ", requests, " requests");
  if (o.warmup > 0) absl::StrAppend(&shape, " after ", o.warmup, " warm-up");
  absl::StrAppend(&shape, o.temperature > 0 ? absl::StrCat(", temperature ", o.temperature)
                                            : std::string(", greedy"));
  return shape;
}

int RunBenchWithGrpc(const BenchOptions& o) {
  absl::StatusOr<bench::LengthDist> in = bench::ParseLengthDist(o.input_len);
  absl::StatusOr<bench::LengthDist> out = bench::ParseLengthDist(o.output_len);
  for (const absl::Status& st : {in.status(), out.status()}) {
    if (!st.ok()) {
      std::fprintf(stderr, "tpserve bench: %s\n", std::string(st.message()).c_str());
      return 2;
    }
  }
  if (o.num_requests <= 0 && o.duration_s <= 0) {
    std::fprintf(stderr, "tpserve bench: give --num-requests N or --duration SECONDS\n");
    return 2;
  }
  std::vector<std::unique_ptr<v1::Inference::Stub>> stubs;
  for (int i = 0; i < std::max(1, o.channels); ++i) {
    // A distinct argument per channel gives each its own connection.
    grpc::ChannelArguments args;
    args.SetInt("tpserve.bench.channel", i);
    stubs.push_back(v1::Inference::NewStub(
        grpc::CreateCustomChannel(o.server, grpc::InsecureChannelCredentials(), args)));
  }
  v1::ModelInfo info;
  grpc::Status st = Unary(
      [&](grpc::ClientContext* c) {
        return stubs[0]->GetModelInfo(c, v1::GetModelInfoRequest(), &info);
      },
      absl::Seconds(10));
  if (!st.ok()) {
    std::fprintf(stderr,
                 "tpserve bench: cannot reach a tpserve server at %s: %s (is the cluster up? "
                 "`tpserve up` prints its address)\n",
                 o.server.c_str(), st.error_message().c_str());
    return 2;
  }
  if (info.kind() == v1::MODEL_KIND_ENCODER || info.vocab_size() <= 0) {
    std::fprintf(stderr, "tpserve bench: %s is not a generative model; nothing to benchmark\n",
                 info.name().c_str());
    return 2;
  }
  std::vector<int32_t> excluded = SpecialIds(*stubs[0], info.vocab_size());
  excluded.insert(excluded.end(), info.eos_token_ids().begin(), info.eos_token_ids().end());
  if (info.bos_token_id() >= 0) excluded.push_back(info.bos_token_id());
  std::vector<int32_t> allowed = bench::AllowedIds(info.vocab_size(), excluded);
  if (!o.quiet) {
    std::fprintf(stderr, "bench: %s (%s, TP=%d, context %d) at %s; %zu of %d ids usable\n",
                 info.name().c_str(), info.architecture().c_str(), info.tensor_parallel(),
                 info.context_length(), o.server.c_str(), allowed.size(), info.vocab_size());
  }

  signal(SIGINT, OnInterrupt);
  signal(SIGTERM, OnInterrupt);
  Runner runner(
      o, std::move(stubs), info,
      bench::PromptMaker(std::move(allowed), o.shared_prefix_ratio, o.num_prefixes, o.seed), *in,
      *out);
  if (o.warmup > 0) runner.Run("warm-up", o.warmup, 0);
  Runner::Phase phase = runner.Run("bench", o.num_requests, o.duration_s);

  bench::Report report;
  report.server = o.server;
  report.model = info.name();
  report.tensor_parallel = info.tensor_parallel();
  report.load = LoadText(o, static_cast<int64_t>(phase.records.size()));
  report.input_len = in->ToString();
  report.output_len = out->ToString();
  report.shared_prefix_ratio = o.shared_prefix_ratio;
  bench::FillReport(phase.records, phase.samples, phase.before, phase.after, phase.duration_s,
                    &report);
  report.client_cpu_percent = phase.duration_s > 0 ? 100 * phase.cpu_s / phase.duration_s : 0;
  std::fputs(bench::FormatReport(report).c_str(), stdout);
  std::fflush(stdout);
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    f << bench::ReportToJson(report).dump(2) << "\n";
    if (!f.good()) {
      std::fprintf(stderr, "tpserve bench: cannot write %s\n", o.json_path.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace

int RunBench(const BenchOptions& o) {
  // gRPC shuts down when its last user goes; for the callback API that shutdown runs on a thread
  // of its own, which raced with the process exit (abort in grpc_cq_internal_unref, ~1 run in
  // 30). Holding our own reference until every channel and call is gone, then dropping it with
  // the blocking variant, finishes the shutdown before we return.
  grpc_init();
  const int code = RunBenchWithGrpc(o);
  grpc_shutdown_blocking();
  return code;
}

}  // namespace tpserve
