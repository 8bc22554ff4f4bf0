// The `tpserve` command line. Subcommands: generate (local engine or --server), up (a local
// cluster), chat, bench (load generator), models (the model cache).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>

#include "tools/bench.h"
#include "tools/client.h"
#include "tools/generate.h"
#include "tools/models.h"
#include "tools/up.h"

namespace {

// Debian's OpenBLAS 0.3.21 does not recognise recent AVX-512 CPUs and falls back to older
// kernels; SkylakeX kernels about double sgemm, i.e. prefill (shared/FACTS.md). OpenBLAS reads
// OPENBLAS_CORETYPE when the library loads, before main, so set it and re-exec once. A value the
// user set is kept.
void PreferAvx512Blas(char** argv) {
#if defined(__x86_64__)
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || !__builtin_cpu_supports("avx512f")) return;
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run with what we have
#endif
}

}  // namespace

int main(int argc, char** argv) {
  PreferAvx512Blas(argv);
  CLI::App app{"tpserve: tensor-parallel Transformer serving"};
  app.require_subcommand(1);

  tpserve::GenerateOptions gen;
  CLI::App* generate = app.add_subcommand(
      "generate", "generate tokens with the local engine (--model), or from a cluster (--server)");
  CLI::Option* model_opt =
      generate->add_option("--model", gen.model, "a .gguf file or a Hugging Face model folder");
  tpserve::ClientOptions client;
  generate
      ->add_option("--server", client.server,
                   "HOST:PORT of a running cluster (tpserve up): stream from it instead of "
                   "the local engine")
      ->excludes(model_opt);
  generate->add_option("text", gen.prompt, "prompt text (same as --prompt)");
  CLI::Option* ids =
      generate->add_option("--prompt-ids", gen.prompt_ids, "prompt token ids (comma separated)")
          ->delimiter(',');
  CLI::Option* text = generate->add_option("--prompt", gen.prompt,
                                           "prompt text (tokenized with the model's tokenizer)");
  ids->excludes(text);
  generate->add_flag("--chat", gen.chat, "wrap --prompt in the model's chat template");
  generate->add_option("--max-tokens", gen.max_tokens, "tokens to generate")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  generate->add_option("--temperature", gen.temperature, "0 = greedy")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  generate->add_option("--top-k", gen.top_k, "0 = off")->capture_default_str();
  generate->add_option("--top-p", gen.top_p, "1 = off")
      ->check(CLI::Range(0.0f, 1.0f))
      ->capture_default_str();
  generate->add_option("--min-p", gen.min_p, "0 = off")
      ->check(CLI::Range(0.0f, 1.0f))
      ->capture_default_str();
  generate->add_option("--seed", gen.seed, "sampling seed")->capture_default_str();
  generate->add_option("--threads", gen.threads, "CPU threads (local engine)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  generate
      ->add_option(
          "--device", gen.device,
          "local engine device: cpu[:int8x2|:int8|:fp32] (int8x2 by default where the build has "
          "AVX-512 VNNI), or cuda:K[:fp32] in a CUDA build (bf16 by default)")
      ->capture_default_str();
  generate->add_flag("--ignore-eos", gen.ignore_eos, "keep going past end-of-sequence tokens");

  tpserve::UpOptions up;
  CLI::App* up_cmd = tpserve::AddUpCommand(app, up);

  tpserve::ClientOptions chat;
  CLI::App* chat_cmd = app.add_subcommand("chat", "interactive chat with a running cluster");
  chat_cmd->add_option("--server", chat.server, "HOST:PORT of the cluster (tpserve up prints it)")
      ->required();
  chat_cmd->add_option("--system", chat.system, "system prompt (none by default)");
  chat_cmd->add_option("--max-tokens", chat.max_tokens, "most tokens per answer (-1: no cap)")
      ->capture_default_str();
  chat_cmd->add_option("--temperature", chat.temperature, "0 = greedy")->capture_default_str();
  chat_cmd->add_option("--seed", chat.seed, "sampling seed (unset: the server picks one)");

  tpserve::BenchOptions bench;
  CLI::App* bench_cmd = tpserve::AddBenchCommand(app, bench);
  tpserve::ModelsOptions models;
  CLI::App* models_cmd = tpserve::AddModelsCommand(app, models);

  CLI11_PARSE(app, argc, argv);
  if (generate->parsed() && !client.server.empty()) {
    client.prompt = gen.prompt;
    client.prompt_ids = gen.prompt_ids;
    client.chat = gen.chat;
    client.max_tokens = generate->count("--max-tokens") > 0 ? gen.max_tokens : -1;
    client.temperature = gen.temperature;
    client.top_k = gen.top_k;
    client.top_p = gen.top_p;
    client.min_p = gen.min_p;
    client.has_seed = generate->count("--seed") > 0;
    client.seed = gen.seed;
    client.ignore_eos = gen.ignore_eos;
    return tpserve::RunGenerateClient(client);
  }
  if (generate->parsed() && gen.model.empty()) {
    std::fprintf(stderr, "tpserve generate: give --model PATH (local engine) or --server ADDR\n");
    return 2;
  }
  if (generate->parsed()) return tpserve::RunGenerate(gen);
  if (up_cmd->parsed()) return tpserve::RunUp(up);
  if (chat_cmd->parsed()) {
    chat.has_seed = chat_cmd->count("--seed") > 0;
    return tpserve::RunChatClient(chat);
  }
  if (bench_cmd->parsed()) return tpserve::RunBench(bench);
  if (models_cmd->parsed()) return tpserve::RunModels(models);
  return 0;
}
