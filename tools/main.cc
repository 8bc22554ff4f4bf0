// The `tpserve` command line. Subcommands: generate (single-process engine).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdlib>

#include "tools/generate.h"

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
  CLI::App* generate = app.add_subcommand("generate", "generate tokens with the local CPU engine");
  generate->add_option("--model", gen.model, "a .gguf file or a Hugging Face model folder")
      ->required();
  CLI::Option* ids =
      generate->add_option("--prompt-ids", gen.prompt_ids, "prompt token ids (comma separated)")
          ->delimiter(',');
  CLI::Option* text = generate->add_option("--prompt", gen.prompt,
                                           "prompt text (tokenized with the model's tokenizer)");
  ids->excludes(text);
  generate->add_flag("--chat", gen.chat, "wrap --prompt in the model's chat template");
  generate->add_option("--max-tokens", gen.max_tokens, "tokens to generate")
      ->check(CLI::PositiveNumber);
  generate->add_option("--temperature", gen.temperature, "0 = greedy")
      ->check(CLI::NonNegativeNumber);
  generate->add_option("--top-k", gen.top_k, "0 = off");
  generate->add_option("--top-p", gen.top_p, "1 = off")->check(CLI::Range(0.0f, 1.0f));
  generate->add_option("--min-p", gen.min_p, "0 = off")->check(CLI::Range(0.0f, 1.0f));
  generate->add_option("--seed", gen.seed, "sampling seed");
  generate->add_option("--threads", gen.threads, "CPU threads")->check(CLI::PositiveNumber);
  generate->add_flag("--ignore-eos", gen.ignore_eos, "keep going past end-of-sequence tokens");

  CLI11_PARSE(app, argc, argv);
  if (generate->parsed()) return tpserve::RunGenerate(gen);
  return 0;
}
