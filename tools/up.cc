#include "tools/up.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "coordinator/api/health_client.h"

namespace tpserve {
namespace {

namespace fs = std::filesystem;

std::atomic<int> g_signal{0};
void OnSignal(int sig) { g_signal.store(sig); }

std::mutex g_print_mu;

// Per-rank shard-loading progress, drawn as the last lines of a terminal while the workers load
// (DESIGN: the worker logs "load progress DONE/TOTAL bytes ...", worker/service/load_progress.h).
// Other log lines are printed above it. Off when stderr is not a terminal: the workers' progress
// lines are then printed like any other.
class ProgressBoard {
 public:
  explicit ProgressBoard(int ranks) : done_(ranks, 0), total_(ranks, 0) {
    tty_ = isatty(STDERR_FILENO) == 1;
  }

  // Under g_print_mu. True when the line was taken (drawn, not to be printed).
  bool Update(int rank, int64_t done, int64_t total) {
    if (!tty_ || closed_) return false;
    done_[rank] = done;
    total_[rank] = total;
    Erase();
    Draw();
    return true;
  }
  // Under g_print_mu: prints `text` (one or more lines) above the board.
  void Print(const std::string& text) {
    Erase();
    std::fputs(text.c_str(), stderr);
    Draw();
  }
  // Under g_print_mu: the board goes away (SERVING, or stopping).
  void Close() {
    Erase();
    closed_ = true;
  }

 private:
  void Erase() {
    if (drawn_ > 0) std::fprintf(stderr, "\033[%dF\033[J", drawn_);
    drawn_ = 0;
  }
  void Draw() {
    if (closed_) return;
    for (size_t r = 0; r < done_.size(); ++r) {
      if (total_[r] == 0) continue;
      constexpr int kWidth = 30;
      const double f = std::min(1.0, static_cast<double>(done_[r]) / total_[r]);
      const int fill = static_cast<int>(f * kWidth);
      std::fprintf(stderr, "worker %-6zu| loading [%s%s] %3d%%  %.1f / %.1f MiB\n", r,
                   std::string(fill, '#').c_str(), std::string(kWidth - fill, '.').c_str(),
                   static_cast<int>(100 * f), done_[r] / 1048576.0, total_[r] / 1048576.0);
      ++drawn_;
    }
    std::fflush(stderr);
  }

  bool tty_ = false;
  bool closed_ = false;
  int drawn_ = 0;  // board lines on screen now
  std::vector<int64_t> done_, total_;
};

ProgressBoard* g_board = nullptr;  // set in RunUp before any child starts

void PrintLine(const std::string& text) {
  std::lock_guard<std::mutex> lock(g_print_mu);
  if (g_board != nullptr) {
    g_board->Print(text);
  } else {
    std::fputs(text.c_str(), stderr);
  }
}

void Say(const std::string& line) { PrintLine(absl::StrCat("[up] ", line, "\n")); }

// The worker's "load progress DONE/TOTAL bytes" (worker/service/load_progress.h), anywhere in a
// text or JSON log line.
bool ParseProgress(const char* line, int64_t* done, int64_t* total) {
  const char* at = std::strstr(line, "load progress ");
  long long d = 0, t = 0;
  if (at == nullptr || std::sscanf(at + 14, "%lld/%lld bytes", &d, &t) != 2 || t <= 0) {
    return false;
  }
  *done = d;
  *total = t;
  return true;
}

// A binary next to ours in the build tree (tools/ -> ../coordinator/api, ../worker/service), in
// our own folder, or on PATH (returned as the bare name for execvp).
std::string FindBinary(const std::string& name, const std::string& build_subdir) {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fs::path& p :
         {self.parent_path() / ".." / build_subdir / name, self.parent_path() / name}) {
      if (fs::exists(p, ec)) return fs::weakly_canonical(p, ec).string();
    }
  }
  return name;
}

// A port that was free a moment ago (bind 0, read it back, close).
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

struct Child {
  std::string name;
  int rank = -1;  // workers: their rank (progress lines); -1 for the coordinator
  std::vector<std::string> argv;
  int restarts = 0;
  pid_t pid = -1;
  std::thread logger;
  bool exited = false;
  int status = 0;
};

// Starts `argv` with stdout+stderr into a pipe whose lines are printed as "name | line".
bool Spawn(Child& c, const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe(fds) != 0) return false;
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    close(fds[1]);
    // Ctrl-C reaches us; we stop the children in order.
    setpgid(0, 0);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "cannot run %s: %s\n", args[0], strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  c.pid = pid;
  c.logger = std::thread([fd = fds[0], name = c.name, rank = c.rank] {
    FILE* f = fdopen(fd, "r");
    char* line = nullptr;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
      int64_t done = 0, total = 0;
      if (rank >= 0 && ParseProgress(line, &done, &total)) {
        std::lock_guard<std::mutex> lock(g_print_mu);
        if (g_board != nullptr && g_board->Update(rank, done, total)) continue;
      }
      std::string text = absl::StrFormat("%-13s| %s", name, line);
      if (line[n - 1] != '\n') text += '\n';
      PrintLine(text);
    }
    free(line);
    fclose(f);
  });
  return true;
}

void StopAll(std::vector<std::unique_ptr<Child>>& children) {
  // Workers first, then the coordinator, so it does not log every worker as lost.
  for (auto it = children.rbegin(); it != children.rend(); ++it) {
    if (!(*it)->exited) kill((*it)->pid, SIGTERM);
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  for (auto& c : children) {
    bool killed = false;
    while (!c->exited) {
      const pid_t r = waitpid(c->pid, &c->status, WNOHANG);
      if (r == c->pid || r < 0) {
        c->exited = true;
        break;
      }
      if (absl::Now() > deadline && !killed) {
        Say(absl::StrCat(c->name, " did not stop within 10 s; killing it"));
        kill(c->pid, SIGKILL);
        killed = true;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  for (auto& c : children) {
    if (c->logger.joinable()) c->logger.join();
  }
}

std::string ExitText(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return "ended";
}

}  // namespace

// HOST:PORT with port 0 replaced by a free port (so that we know the URL to print).
std::string ResolvePort(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || listen.substr(colon + 1) != "0") return listen;
  return absl::StrCat(listen.substr(0, colon), ":", FreePort());
}

// The URL a local client uses for a listen address (a wildcard host becomes loopback).
std::string LocalUrl(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") host = "127.0.0.1";
  return absl::StrCat("http://", host, ":", listen.substr(colon + 1));
}

int RunUp(const UpOptions& o) {
  signal(SIGINT, OnSignal);
  signal(SIGTERM, OnSignal);
  signal(SIGPIPE, SIG_IGN);
  if (o.device != "cpu" && o.device != "cuda") {
    Say(absl::StrCat("--device ", o.device, ": expected cpu or cuda (rank r uses cuda:r)"));
    return 2;
  }
  const int port = o.port > 0 ? o.port : FreePort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  const std::string http_listen = o.http_listen.empty() ? "" : ResolvePort(o.http_listen);
  const std::string coordinator = FindBinary("tpserve-coordinator", "coordinator/api");
  const std::string worker = FindBinary("tpserve-worker", "worker/service");
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const int threads = o.threads > 0 ? o.threads : std::max(1, static_cast<int>(hw) / o.tp);
#if defined(__x86_64__)
  // Debian's OpenBLAS picks AVX2 kernels on AVX-512 CPUs unless told (shared/FACTS.md).
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr && __builtin_cpu_supports("avx512f")) {
    setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  }
#endif
  ProgressBoard board(o.tp);
  g_board = &board;

  std::vector<std::unique_ptr<Child>> children;
  auto start = [&](std::string name, int rank, std::vector<std::string> argv) {
    auto c = std::make_unique<Child>();
    c->name = std::move(name);
    c->rank = rank;
    c->argv = argv;
    if (!Spawn(*c, argv)) {
      Say(absl::StrCat("cannot start ", argv[0]));
      return false;
    }
    children.push_back(std::move(c));
    return true;
  };
  // --flag value when value is set.
  const auto add = [](std::vector<std::string>& args, const char* flag, const std::string& v) {
    if (!v.empty() && v != "0") args.insert(args.end(), {flag, v});
  };
  std::vector<std::string> logs;
  add(logs, "--log-format", o.log_format);
  add(logs, "--log-level", o.log_level);

  std::vector<std::string> cargs = {coordinator,          "--model",  o.model, "--tp",
                                    std::to_string(o.tp), "--listen", address};
  add(cargs, "--max-context", std::to_string(o.max_context));
  add(cargs, "--http-listen", http_listen);
  add(cargs, "--max-seqs", std::to_string(o.max_seqs));
  add(cargs, "--max-batch-tokens", std::to_string(o.max_batch_tokens));
  add(cargs, "--kv-block-size", std::to_string(o.kv_block_size));
  if (o.no_prefix_cache) cargs.push_back("--no-prefix-cache");
  cargs.insert(cargs.end(), logs.begin(), logs.end());
  Say(absl::StrCat("starting ", coordinator, " and ", o.tp, " x ", worker, " (",
                   o.device == "cpu" ? absl::StrCat(threads, " thread(s) each")
                   : o.tp == 1       ? std::string("cuda:0")
                                     : absl::StrCat("cuda:0 .. cuda:", o.tp - 1),
                   ")"));
  bool ok = start("coordinator", -1, cargs);
  for (int r = 0; ok && r < o.tp; ++r) {
    std::vector<std::string> wargs = {
        worker, "--coordinator",      address,    "--rank",     std::to_string(r),
        "--tp", std::to_string(o.tp), "--listen", "127.0.0.1:0"};
    if (o.device == "cpu") {
      add(wargs, "--threads", std::to_string(threads));
    } else {
      add(wargs, "--device", absl::StrCat("cuda:", r));
    }
    add(wargs, "--memory-budget", std::to_string(o.memory_budget));
    add(wargs, "--dtype", o.dtype);
    add(wargs, "--kv-cache-dtype", o.kv_cache_dtype);
    add(wargs, "--collectives", o.collectives);
    wargs.insert(wargs.end(), logs.begin(), logs.end());
    ok = start(absl::StrCat("worker ", r), r, wargs);
  }

  int code = 0;
  bool serving = false, ever_served = false;
  const absl::Time ready_deadline = absl::Now() + absl::Seconds(o.ready_timeout_s);
  absl::Time next_check = absl::Now();
  const auto close_board = [&]() {
    std::lock_guard<std::mutex> lock(g_print_mu);
    board.Close();
  };
  while (ok && g_signal.load() == 0) {
    bool died = false;
    for (auto& c : children) {
      if (!c->exited && waitpid(c->pid, &c->status, WNOHANG) == c->pid) {
        c->exited = true;
        close_board();
        // A worker is started again: it registers, the coordinator re-forms the group, and the
        // requests in flight resume (coordinator --resume-window-s). Not before the cluster
        // first served: an exit then is a start-up error that a restart would only repeat.
        if (c->rank >= 0 && ever_served && c->restarts < o.worker_restarts) {
          ++c->restarts;
          Say(absl::StrCat(c->name, " ", ExitText(c->status), "; starting it again (restart ",
                           c->restarts, " of ", o.worker_restarts, ")"));
          if (c->logger.joinable()) c->logger.join();  // its pipe closed with it
          c->exited = false;
          if (Spawn(*c, c->argv)) continue;
          c->exited = true;
          Say(absl::StrCat("cannot start ", c->argv[0], " again"));
        } else {
          Say(absl::StrCat(c->name, " ", ExitText(c->status), "; stopping the cluster"));
        }
        died = true;
      }
    }
    if (died) {
      code = 1;
      break;
    }
    if (absl::Now() >= next_check) {
      next_check = absl::Now() + absl::Milliseconds(250);
      absl::StatusOr<HealthState> h = CheckHealth(address, "", absl::Milliseconds(500));
      const bool now = h.ok() && *h == HealthState::kServing;
      if (now && !serving) {
        close_board();
        Say(absl::StrCat("SERVING ", o.model, " with TP=", o.tp, " on ", address,
                         "  (try: tpserve chat --server ", address, ")"));
        if (!http_listen.empty()) {
          const std::string url = LocalUrl(http_listen);
          Say(absl::StrCat("OpenAI HTTP API on ", url, "/v1  (metrics: ", url,
                           "/metrics; try: curl ", url, "/v1/models)"));
        }
        std::printf("%s\n", address.c_str());
        std::fflush(stdout);
      } else if (!now && serving) {
        Say("health: NOT_SERVING (a worker was lost; waiting for the group to re-form)");
      }
      serving = now;
      ever_served |= now;
      if (!ever_served && absl::Now() > ready_deadline) {
        close_board();
        Say(absl::StrCat("not SERVING after ", o.ready_timeout_s, " s; stopping"));
        code = 1;
        break;
      }
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  close_board();
  if (g_signal.load() != 0) Say("stopping (signal)");
  if (!ok) code = 1;
  const absl::Time stop_start = absl::Now();
  StopAll(children);
  Say(absl::StrCat("all processes stopped (", absl::ToInt64Milliseconds(absl::Now() - stop_start),
                   " ms)"));
  {
    std::lock_guard<std::mutex> lock(g_print_mu);
    g_board = nullptr;
  }
  return code;
}

CLI::App* AddUpCommand(CLI::App& app, UpOptions& options) {
  CLI::App* cmd = app.add_subcommand(
      "up",
      "start a local cluster: tpserve-coordinator + N tpserve-worker processes on loopback; "
      "prints the gRPC address on stdout once SERVING; Ctrl-C stops them all");
  cmd->add_option("--model", options.model, "a .gguf file or a Hugging Face model folder")
      ->required();
  cmd->add_option("--tp", options.tp, "tensor-parallel degree (worker processes)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--port", options.port,
                  "port of the public gRPC API on 127.0.0.1 (0: a free one)")
      ->capture_default_str();
  cmd->add_option("--http-listen", options.http_listen,
                  "HOST:PORT of the coordinator's OpenAI-compatible HTTP API and /metrics, e.g. "
                  "127.0.0.1:8000 (port 0: a free one; the URL is printed once SERVING; "
                  "default: off)");
  cmd->add_option("--device", options.device,
                  "cpu, or cuda: worker rank r computes on GPU r (--device cuda:r; needs a CUDA "
                  "build, an NVIDIA driver and --tp GPUs)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--dtype", options.dtype,
                  "workers' compute dtype: int8x2, int8 or fp32 on cpu (default int8x2 where "
                  "the build has AVX-512 VNNI; see tpserve-worker --help), bf16 or fp32 on cuda "
                  "(default bf16)")
      ->check(CLI::IsMember({"fp32", "bf16", "int8", "int8x2"}));
  cmd->add_option("--kv-cache-dtype", options.kv_cache_dtype,
                  "workers' KV cache element type: auto (fp16 with int8x2 / int8 on cpu and "
                  "bf16 on cuda, fp32 with fp32), fp16, fp32 or int8 (cpu)")
      ->check(CLI::IsMember({"auto", "fp16", "fp32", "int8"}));
  cmd->add_option("--collectives", options.collectives,
                  "workers' data plane: gloo (TCP; staged through host memory on GPUs) or nccl "
                  "(--device cuda only; default gloo)")
      ->check(CLI::IsMember({"gloo", "nccl"}));
  cmd->add_option("--threads", options.threads, "CPU threads per worker (0: cores / tp)")
      ->capture_default_str();
  cmd->add_option("--memory-budget", options.memory_budget,
                  "bytes per worker for weights + KV cache (0: workers decide: on CPU half the "
                  "available memory, at most 2 GiB, over --tp; on GPU 90% of its free memory)")
      ->capture_default_str();
  cmd->add_option("--max-context", options.max_context,
                  "cap on prompt + output tokens (0: model's)")
      ->capture_default_str();
  cmd->add_option("--max-seqs", options.max_seqs,
                  "coordinator: most sequences running in one step (0: its default, 64)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--max-batch-tokens", options.max_batch_tokens,
                  "coordinator: most tokens fed in one step, prefill chunks + decodes (0: its "
                  "default, 512 on CPU workers, 8192 when all are GPUs)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--kv-block-size", options.kv_block_size,
                  "coordinator: tokens per KV cache block (0: its default, 16)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--no-prefix-cache", options.no_prefix_cache,
                "coordinator: disable KV prefix caching (shared prompt prefixes are recomputed)");
  cmd->add_option("--log-format", options.log_format,
                  "every process's log lines: text or json (default: text)")
      ->check(CLI::IsMember({"text", "json"}));
  cmd->add_option("--log-level", options.log_level,
                  "every process's log level: trace, debug, info, warn, error, critical, off "
                  "(default: info)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  cmd->add_option("--ready-timeout", options.ready_timeout_s, "seconds to wait for SERVING")
      ->capture_default_str();
  cmd->add_option("--worker-restarts", options.worker_restarts,
                  "times a worker that exits after the cluster first served is started again (its "
                  "requests in flight resume once the group re-forms); 0: any exit stops the "
                  "cluster")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  return cmd;
}

}  // namespace tpserve
