#include "tools/generate.h"

#include <chrono>
#include <cstdio>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/kv/kv_cache.h"
#include "worker/model/llama.h"
#include "worker/model/model_loader.h"
#include "worker/parallel/communicator.h"
#include "worker/runtime/model_runner.h"

#if TPSERVE_HAVE_TOKENIZER
#include "common/tokenizer/tokenizer.h"
#endif
#if TPSERVE_HAVE_CUDA
#include "worker/backend/cuda/backend_factory.h"
#endif
#if TPSERVE_HAVE_CHAT
#include "common/chat/chat_template.h"
#endif

namespace tpserve {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

#if TPSERVE_HAVE_TOKENIZER
absl::StatusOr<std::unique_ptr<Tokenizer>> OpenTokenizer(const ModelFiles& files) {
  if (files.gguf != nullptr) return Tokenizer::FromGguf(*files.gguf);
  return Tokenizer::FromHfFolder(files.path);
}
#else
struct Tokenizer {};
#endif

// The prompt as token ids: given ids, or the text tokenized (after the chat template with
// --chat, the way transformers' apply_chat_template(add_generation_prompt=True) tokenizes).
absl::StatusOr<std::vector<int32_t>> PromptIds(const GenerateOptions& o, const Tokenizer* tok) {
  if (!o.prompt_ids.empty()) return o.prompt_ids;
  if (o.prompt.empty()) return absl::InvalidArgumentError("give --prompt-ids or --prompt");
#if TPSERVE_HAVE_TOKENIZER
  if (tok == nullptr) return absl::FailedPreconditionError("--prompt: the model has no tokenizer");
  if (!o.chat) return tok->Encode(o.prompt, /*add_special_tokens=*/true);
#if TPSERVE_HAVE_CHAT
  if (tok->chat_template().empty()) {
    return absl::FailedPreconditionError("--chat: the model has no chat template");
  }
  ASSIGN_OR_RETURN(ChatTemplate tmpl, ChatTemplate::Parse(tok->chat_template()));
  const nlohmann::json messages =
      nlohmann::json::array({{{"role", "user"}, {"content", o.prompt}}});
  ASSIGN_OR_RETURN(std::string text, RenderChat(tmpl, messages, /*add_generation_prompt=*/true,
                                                tok->bos_token(), tok->eos_token()));
  return tok->Encode(text, /*add_special_tokens=*/false);
#else
  return absl::UnimplementedError("--chat: chat templates are not available in this build");
#endif
#else
  return absl::UnimplementedError(
      "--prompt: text prompts need the tokenizer, which is not available in this build yet; "
      "use --prompt-ids");
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackendFor(const GenerateOptions& o) {
  // cpu, cpu:int8x2, cpu:int8, cpu:fp32
  if (o.device == "cpu" || o.device.rfind("cpu:", 0) == 0) {
    const std::string precision = o.device == "cpu" ? "" : o.device.substr(4);
    absl::StatusOr<CpuPrecision> p = ParseCpuPrecision(precision);
    if (!p.ok()) {
      return absl::Status(p.status().code(),
                          absl::StrCat("--device ", o.device, ": ", p.status().message()));
    }
    return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(o.threads, *p));
  }
#if TPSERVE_HAVE_CUDA
  return MakeBackend(o.device, o.threads);
#else
  return absl::FailedPreconditionError(absl::StrCat(
      "--device ", o.device, ": this build has no CUDA backend (configure with nvcc present)"));
#endif
}

absl::Status Generate(const GenerateOptions& o) {
  ASSIGN_OR_RETURN(ModelFiles files, OpenModelFiles(o.model));
  const ModelConfig& c = files.config;
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend_owner, MakeBackendFor(o));
  Backend& backend = *backend_owner;
  LocalCommunicator comm;
  const auto load_start = Clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<CausalLm> model,
                   LoadCausalLm(files, SingleRankPlan(c), backend, comm));
  std::fprintf(stderr, "model: %s (%s, %lld layers, hidden %lld, vocab %lld), loaded in %.2f s\n",
               o.model.c_str(), c.architecture.c_str(), static_cast<long long>(c.num_layers),
               static_cast<long long>(c.hidden_size), static_cast<long long>(c.vocab_size),
               Seconds(Clock::now() - load_start));

  std::unique_ptr<Tokenizer> tokenizer;
#if TPSERVE_HAVE_TOKENIZER
  if (auto tok = OpenTokenizer(files); tok.ok()) {
    tokenizer = std::move(*tok);
  } else if (!o.prompt.empty()) {
    return tok.status();
  } else {
    std::fprintf(stderr, "no tokenizer (%s): printing token ids only\n",
                 tok.status().ToString().c_str());
  }
#endif
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptIds(o, tokenizer.get()));
  std::vector<int64_t> eos_ids = c.eos_token_ids;
#if TPSERVE_HAVE_TOKENIZER
  if (tokenizer)
    eos_ids.insert(eos_ids.end(), tokenizer->eos_ids().begin(), tokenizer->eos_ids().end());
  std::unique_ptr<IncrementalDetokenizer> detok;
  if (tokenizer)
    detok = std::make_unique<IncrementalDetokenizer>(*tokenizer, /*skip_special_tokens=*/true);
#endif
  const int64_t block_size = 16;
  const int64_t positions = static_cast<int64_t>(prompt.size()) + o.max_tokens;
  const int64_t num_blocks = (positions + block_size - 1) / block_size;
  ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner,
                   ModelRunner::Create(*model, backend, /*is_rank0=*/true, num_blocks, block_size));
  BlockAllocator blocks(num_blocks);

  StepSequence seq{.seq_id = 0,
                   .tokens = prompt,
                   .start_pos = 0,
                   .block_table = {},  // grown below as positions are added
                   .sampling = SamplingParams{.temperature = o.temperature,
                                              .top_k = o.top_k,
                                              .top_p = o.top_p,
                                              .min_p = o.min_p,
                                              .seed = o.seed}};
  std::fprintf(stderr, "prompt (%zu tokens):", prompt.size());
  for (int32_t t : prompt) std::fprintf(stderr, " %d", t);
  std::fprintf(stderr, "\n");
  std::vector<int32_t> output;

  double prefill_s = 0.0, decode_s = 0.0;
  int generated = 0;
  for (int i = 0; i < o.max_tokens; ++i) {
    RETURN_IF_ERROR(blocks.EnsureCapacity(seq.start_pos + static_cast<int64_t>(seq.tokens.size()),
                                          block_size, &seq.block_table));
    seq.sample_step = i;
    const auto start = Clock::now();
    ASSIGN_OR_RETURN(StepResult r, runner->Execute(Step{.sequences = {seq}}));
    (i == 0 ? prefill_s : decode_s) += Seconds(Clock::now() - start);
    const int32_t token = r.tokens[0];
    ++generated;
    output.push_back(token);
    // Stream text when there is a tokenizer, else ids.
    bool printed = false;
#if TPSERVE_HAVE_TOKENIZER
    if (detok) {
      ASSIGN_OR_RETURN(std::string piece, detok->Push(token));
      std::fputs(piece.c_str(), stdout);
      printed = true;
    }
#endif
    if (!printed) std::printf("%d ", token);
    std::fflush(stdout);
    seq.start_pos += static_cast<int64_t>(seq.tokens.size());
    seq.tokens = {token};
    bool eos = false;
    for (int64_t e : eos_ids) eos |= (e == token);
    if (eos && !o.ignore_eos) break;
  }
#if TPSERVE_HAVE_TOKENIZER
  if (detok) std::fputs(detok->Flush().c_str(), stdout);
#endif
  std::printf("\n");
  std::fprintf(stderr, "generated ids:");
  for (int32_t t : output) std::fprintf(stderr, " %d", t);
  std::fprintf(stderr, "\n");
  std::printf("prefill: %zu tokens in %.3f s = %.1f tok/s\n", prompt.size(), prefill_s,
              prompt.size() / prefill_s);
  if (generated > 1) {
    std::printf("decode: %d tokens in %.3f s = %.1f tok/s (%s, threads %d)\n", generated - 1,
                decode_s, (generated - 1) / decode_s, backend.name().c_str(), o.threads);
  }
  return absl::OkStatus();
}

}  // namespace

int RunGenerate(const GenerateOptions& options) {
  absl::Status st = Generate(options);
  if (!st.ok()) {
    std::fprintf(stderr, "tpserve generate: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace tpserve
