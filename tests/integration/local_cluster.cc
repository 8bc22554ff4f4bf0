#include "tests/integration/local_cluster.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/api/health_client.h"

namespace tpserve::testing {

int FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

std::string ModelsDir() {
  if (const char* d = std::getenv("TPSERVE_MODELS"); d != nullptr && *d != '\0') return d;
  const char* home = std::getenv("HOME");
  return absl::StrCat(home != nullptr ? home : "", "/.cache/tpserve/models");
}

LocalCluster::LocalCluster(std::string model, int tp, std::vector<std::string> coordinator_args,
                           std::vector<std::string> worker_args)
    : model_(std::move(model)), tp_(tp), worker_args_(std::move(worker_args)), workers_(tp, -1) {
  char tmpl[] = "/tmp/tpserve-it-XXXXXX";
  log_dir_ = mkdtemp(tmpl);
  address_ = absl::StrCat("127.0.0.1:", FreeLoopbackPort());
  std::vector<std::string> argv = {TPSERVE_COORDINATOR_BIN, "--model",  model_,  "--tp",
                                   std::to_string(tp),      "--listen", address_};
  // Shorter than the defaults, so a failing test fails sooner; a test may set its own.
  for (const auto& [flag, value] :
       {std::pair<std::string, std::string>{"--step-timeout-ms", "20000"},
        {"--collective-timeout-ms", "10000"}}) {
    if (std::find(coordinator_args.begin(), coordinator_args.end(), flag) ==
        coordinator_args.end()) {
      argv.insert(argv.end(), {flag, value});
    }
  }
  argv.insert(argv.end(), coordinator_args.begin(), coordinator_args.end());
  coordinator_ = Start("coordinator", argv);
  for (int r = 0; r < tp; ++r) StartWorker(r);
}

LocalCluster::~LocalCluster() {
  std::vector<pid_t> all = workers_;
  all.insert(all.end(), extra_.begin(), extra_.end());
  all.push_back(coordinator_);
  for (pid_t p : all) {
    if (p <= 0) continue;
    kill(p, SIGTERM);
    kill(p, SIGCONT);  // a frozen worker (FreezeWorker) handles SIGTERM only once it runs
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  for (pid_t p : all) {
    if (p <= 0) continue;
    while (waitpid(p, nullptr, WNOHANG) == 0) {
      if (absl::Now() > deadline) {
        kill(p, SIGKILL);
        waitpid(p, nullptr, 0);
        break;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  if (std::getenv("TPSERVE_KEEP_TEST_LOGS") == nullptr) {
    std::error_code ec;
    std::filesystem::remove_all(log_dir_, ec);
  }
}

pid_t LocalCluster::Start(const std::string& name, const std::vector<std::string>& argv) {
  const std::string log = absl::StrCat(log_dir_, "/", name, ".log");
  log_files_.push_back(log);
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

void LocalCluster::StartWorker(int rank) {
  std::vector<std::string> argv = {TPSERVE_WORKER_BIN,
                                   "--coordinator",
                                   address_,
                                   "--rank",
                                   std::to_string(rank),
                                   "--tp",
                                   std::to_string(tp_),
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--threads",
                                   "1"};
  argv.insert(argv.end(), worker_args_.begin(), worker_args_.end());
  workers_[rank] = Start(absl::StrCat("worker", rank), argv);
}

pid_t LocalCluster::StartExtraWorker(const std::string& name, int rank, int tp) {
  const pid_t pid =
      Start(name, {TPSERVE_WORKER_BIN, "--coordinator", address_, "--rank", std::to_string(rank),
                   "--tp", std::to_string(tp), "--listen", "127.0.0.1:0", "--threads", "1"});
  extra_.push_back(pid);
  return pid;
}

std::string LocalCluster::ReadLog(const std::string& name) const {
  std::ifstream in(absl::StrCat(log_dir_, "/", name, ".log"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void LocalCluster::KillWorker(int rank) {
  kill(workers_[rank], SIGKILL);
  waitpid(workers_[rank], nullptr, 0);
  workers_[rank] = -1;
}

void LocalCluster::RestartWorker(int rank) { StartWorker(rank); }

void LocalCluster::FreezeWorker(int rank) { kill(workers_[rank], SIGSTOP); }

void LocalCluster::ThawWorker(int rank) { kill(workers_[rank], SIGCONT); }

bool LocalCluster::CoordinatorAlive() { return waitpid(coordinator_, nullptr, WNOHANG) == 0; }

absl::Status LocalCluster::WaitHealth(bool serving, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no answer";
  while (absl::Now() < deadline) {
    if (!CoordinatorAlive()) return absl::InternalError("the coordinator exited:\n" + Logs());
    absl::StatusOr<HealthState> h = CheckHealth(address_, "", absl::Seconds(1));
    if (h.ok() && (*h == HealthState::kServing) == serving) return absl::OkStatus();
    last = h.ok() ? absl::StrCat("state ", static_cast<int>(*h)) : h.status().ToString();
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "health never became ", serving ? "SERVING" : "NOT_SERVING", " (", last, ")\n", Logs()));
}

std::unique_ptr<v1::Inference::Stub> LocalCluster::Stub() const {
  return v1::Inference::NewStub(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
}

std::string LocalCluster::Logs() const {
  std::string out;
  for (const std::string& f : log_files_) {
    std::ifstream in(f);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    out += absl::StrCat("---- ", f, " (last 30 lines)\n");
    for (size_t i = lines.size() > 30 ? lines.size() - 30 : 0; i < lines.size(); ++i) {
      out += lines[i] + "\n";
    }
  }
  return out;
}

}  // namespace tpserve::testing
