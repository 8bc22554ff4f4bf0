#include "tools/up.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/api/health_client.h"

namespace tpserve {
namespace {

namespace fs = std::filesystem;

std::atomic<int> g_signal{0};
void OnSignal(int sig) { g_signal.store(sig); }

std::mutex g_print_mu;

void Say(const std::string& line) {
  std::lock_guard<std::mutex> lock(g_print_mu);
  std::fprintf(stderr, "[up] %s\n", line.c_str());
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
  c.logger = std::thread([fd = fds[0], name = c.name] {
    FILE* f = fdopen(fd, "r");
    char* line = nullptr;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
      std::lock_guard<std::mutex> lock(g_print_mu);
      std::fprintf(stderr, "%-13s| %s", name.c_str(), line);
      if (line[n - 1] != '\n') std::fputc('\n', stderr);
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
    while (!c->exited) {
      const pid_t r = waitpid(c->pid, &c->status, WNOHANG);
      if (r == c->pid || r < 0) {
        c->exited = true;
        break;
      }
      if (absl::Now() > deadline) {
        Say(absl::StrCat(c->name, " did not stop within 10 s; killing it"));
        kill(c->pid, SIGKILL);
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

int RunUp(const UpOptions& o) {
  signal(SIGINT, OnSignal);
  signal(SIGTERM, OnSignal);
  signal(SIGPIPE, SIG_IGN);
  const int port = o.port > 0 ? o.port : FreePort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
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

  std::vector<std::unique_ptr<Child>> children;
  auto start = [&](std::string name, std::vector<std::string> argv) {
    auto c = std::make_unique<Child>();
    c->name = std::move(name);
    if (!Spawn(*c, argv)) {
      Say(absl::StrCat("cannot start ", argv[0]));
      return false;
    }
    children.push_back(std::move(c));
    return true;
  };
  std::vector<std::string> cargs = {coordinator,          "--model",  o.model, "--tp",
                                    std::to_string(o.tp), "--listen", address};
  if (o.max_context > 0) {
    cargs.insert(cargs.end(), {"--max-context", std::to_string(o.max_context)});
  }
  Say(absl::StrCat("starting ", coordinator, " and ", o.tp, " x ", worker, " (", threads,
                   " thread(s) each)"));
  bool ok = start("coordinator", cargs);
  for (int r = 0; ok && r < o.tp; ++r) {
    std::vector<std::string> wargs = {worker,
                                      "--coordinator",
                                      address,
                                      "--rank",
                                      std::to_string(r),
                                      "--tp",
                                      std::to_string(o.tp),
                                      "--listen",
                                      "127.0.0.1:0",
                                      "--threads",
                                      std::to_string(threads)};
    if (o.memory_budget > 0) {
      wargs.insert(wargs.end(), {"--memory-budget", std::to_string(o.memory_budget)});
    }
    ok = start(absl::StrCat("worker ", r), wargs);
  }

  int code = 0;
  bool serving = false, ever_served = false;
  const absl::Time ready_deadline = absl::Now() + absl::Seconds(o.ready_timeout_s);
  absl::Time next_check = absl::Now();
  while (ok && g_signal.load() == 0) {
    bool died = false;
    for (auto& c : children) {
      if (!c->exited && waitpid(c->pid, &c->status, WNOHANG) == c->pid) {
        c->exited = true;
        Say(absl::StrCat(c->name, " ", ExitText(c->status), "; stopping the cluster"));
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
        Say(absl::StrCat("SERVING ", o.model, " with TP=", o.tp, " on ", address,
                         "  (try: tpserve chat --server ", address, ")"));
        std::printf("%s\n", address.c_str());
        std::fflush(stdout);
      } else if (!now && serving) {
        Say("health: NOT_SERVING (a worker was lost; waiting for the group to re-form)");
      }
      serving = now;
      ever_served |= now;
      if (!ever_served && absl::Now() > ready_deadline) {
        Say(absl::StrCat("not SERVING after ", o.ready_timeout_s, " s; stopping"));
        code = 1;
        break;
      }
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (g_signal.load() != 0) Say("stopping (signal)");
  if (!ok) code = 1;
  StopAll(children);
  Say("all processes stopped");
  return code;
}

CLI::App* AddUpCommand(CLI::App& app, UpOptions& options) {
  CLI::App* cmd =
      app.add_subcommand("up",
                         "start a local cluster: tpserve-coordinator + N tpserve-worker "
                         "processes on loopback; Ctrl-C stops them all");
  cmd->add_option("--model", options.model, "a .gguf file or a Hugging Face model folder")
      ->required();
  cmd->add_option("--tp", options.tp, "tensor-parallel degree (worker processes)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--port", options.port, "port of the public API on 127.0.0.1 (0: a free one)")
      ->capture_default_str();
  cmd->add_option("--threads", options.threads, "CPU threads per worker (0: cores / tp)")
      ->capture_default_str();
  cmd->add_option("--memory-budget", options.memory_budget, "bytes per worker (0: workers decide)")
      ->capture_default_str();
  cmd->add_option("--max-context", options.max_context,
                  "cap on prompt + output tokens (0: model's)")
      ->capture_default_str();
  cmd->add_option("--ready-timeout", options.ready_timeout_s, "seconds to wait for SERVING")
      ->capture_default_str();
  return cmd;
}

}  // namespace tpserve
