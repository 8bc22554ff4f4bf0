// `tpserve generate --server ADDR` and `tpserve chat --server ADDR`: clients of a running
// cluster's Inference service that print text as it streams.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tpserve {

struct ClientOptions {
  std::string server;  // host:port of the coordinator
  std::string prompt;
  std::vector<int32_t> prompt_ids;
  bool chat = false;    // send the prompt as one user turn of a chat
  std::string system;   // chat: optional system prompt
  int max_tokens = -1;  // -1: the server's default (to the end of the context)
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  bool has_seed = false;
  uint64_t seed = 0;
  bool ignore_eos = false;
  int timeout_s = 600;
};

// Streams one generation to stdout, timings to stderr; returns the exit code.
int RunGenerateClient(const ClientOptions& options);
// Interactive chat on stdin/stdout with the conversation kept as history; /reset, /quit.
int RunChatClient(const ClientOptions& options);

}  // namespace tpserve
