#include "worker/model/llama_weights.h"

#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace tpserve {
namespace {

// The same tensor under its GGUF and its Hugging Face name (layer tensors get "blk.N." /
// "model.layers.N." in front).
struct TensorName {
  std::string_view gguf;
  std::string_view hf;
};
constexpr TensorName kEmbedding{"token_embd.weight", "model.embed_tokens.weight"};
constexpr TensorName kFinalNorm{"output_norm.weight", "model.norm.weight"};
constexpr TensorName kLmHead{"output.weight", "lm_head.weight"};
constexpr TensorName kAttnNorm{"attn_norm.weight", "input_layernorm.weight"};
constexpr TensorName kQ{"attn_q.weight", "self_attn.q_proj.weight"};
constexpr TensorName kK{"attn_k.weight", "self_attn.k_proj.weight"};
constexpr TensorName kV{"attn_v.weight", "self_attn.v_proj.weight"};
constexpr TensorName kO{"attn_output.weight", "self_attn.o_proj.weight"};
constexpr TensorName kQBias{"attn_q.bias", "self_attn.q_proj.bias"};
constexpr TensorName kKBias{"attn_k.bias", "self_attn.k_proj.bias"};
constexpr TensorName kVBias{"attn_v.bias", "self_attn.v_proj.bias"};
constexpr TensorName kOBias{"attn_output.bias", "self_attn.o_proj.bias"};
constexpr TensorName kFfnNorm{"ffn_norm.weight", "post_attention_layernorm.weight"};
constexpr TensorName kGate{"ffn_gate.weight", "mlp.gate_proj.weight"};
constexpr TensorName kUp{"ffn_up.weight", "mlp.up_proj.weight"};
constexpr TensorName kDown{"ffn_down.weight", "mlp.down_proj.weight"};
constexpr TensorName kGateBias{"ffn_gate.bias", "mlp.gate_proj.bias"};
constexpr TensorName kUpBias{"ffn_up.bias", "mlp.up_proj.bias"};
constexpr TensorName kDownBias{"ffn_down.bias", "mlp.down_proj.bias"};

// Reads tensors by role, checking full shapes before slicing.
class Reader {
 public:
  Reader(const TensorSource& source, Backend& backend)
      : source_(source), backend_(backend), gguf_(source.Find(kEmbedding.gguf) != nullptr) {}

  std::string Name(const TensorName& n, int64_t layer = -1) const {
    if (layer < 0) return std::string(gguf_ ? n.gguf : n.hf);
    return gguf_ ? absl::StrCat("blk.", layer, ".", std::string(n.gguf))
                 : absl::StrCat("model.layers.", layer, ".", std::string(n.hf));
  }
  bool Has(const TensorName& n, int64_t layer = -1) const {
    return source_.Find(Name(n, layer)) != nullptr;
  }

  // Rows `rows` and columns `cols` of a matrix whose full shape must be [out, in].
  absl::StatusOr<Weight> Matrix(const TensorName& n, int64_t layer, int64_t out, int64_t in,
                                Range rows, Range cols) const {
    ASSIGN_OR_RETURN(const TensorInfo* info, source_.Get(Name(n, layer)));
    RETURN_IF_ERROR(CheckShape(*info, {out, in}));
    ASSIGN_OR_RETURN(TensorView view, ViewSlice(*info, TensorSlice{.row_begin = rows.begin,
                                                                   .row_end = rows.end,
                                                                   .col_begin = cols.begin,
                                                                   .col_end = cols.end}));
    absl::StatusOr<Weight> w = backend_.LoadWeight(view);
    if (!w.ok()) return Annotate(*info, w.status());
    return w;
  }

  // Elements `part` of a vector whose full shape must be [n].
  absl::StatusOr<Tensor> Vector(const TensorName& name, int64_t layer, int64_t n,
                                Range part) const {
    ASSIGN_OR_RETURN(const TensorInfo* info, source_.Get(Name(name, layer)));
    RETURN_IF_ERROR(CheckShape(*info, {n}));
    ASSIGN_OR_RETURN(TensorView view,
                     ViewSlice(*info, TensorSlice{.col_begin = part.begin, .col_end = part.end}));
    absl::StatusOr<Tensor> t = backend_.LoadVector(view);
    if (!t.ok()) return Annotate(*info, t.status());
    return t;
  }
  absl::StatusOr<Tensor> Vector(const TensorName& name, int64_t layer, int64_t n) const {
    return Vector(name, layer, n, Range{0, n});
  }

 private:
  static absl::Status Annotate(const TensorInfo& info, const absl::Status& st) {
    return absl::Status(
        st.code(), absl::StrCat("file ", info.file, ": tensor ", info.name, ": ", st.message()));
  }

  const TensorSource& source_;
  Backend& backend_;
  bool gguf_;
};

}  // namespace

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const TensorSource& source, const ModelConfig& c,
                                              const RankShard& shard, Backend& backend) {
  const Reader r(source, backend);
  const int64_t H = c.hidden_size, hd = c.head_dim, F = c.intermediate_size, V = c.vocab_size;
  const Range all_h{0, H};
  // This rank's slices, in rows/columns of the full matrices.
  const Range q_rows{shard.q_heads.begin * hd, shard.q_heads.end * hd};
  const Range kv_rows{shard.kv_heads.begin * hd, shard.kv_heads.end * hd};
  const Range ffn = shard.ffn_columns;
  const Range vocab = shard.vocab;
  const int64_t q_all = c.num_heads * hd, kv_all = c.num_kv_heads * hd;

  LlamaWeights w;
  ASSIGN_OR_RETURN(w.embedding, r.Matrix(kEmbedding, -1, V, H, vocab, all_h));
  ASSIGN_OR_RETURN(w.final_norm, r.Vector(kFinalNorm, -1, H));
  if (r.Has(kLmHead)) {
    ASSIGN_OR_RETURN(w.lm_head, r.Matrix(kLmHead, -1, V, H, vocab, all_h));
  } else {
    // Absent output matrix: tied to the embedding (GGUF omits it; HF may when tied).
    if (!c.tie_word_embeddings && source.Find(kEmbedding.gguf) == nullptr) {
      return absl::NotFoundError(absl::StrCat(source.description(), ": tensor ", r.Name(kLmHead),
                                              " is missing and tie_word_embeddings is false"));
    }
    w.lm_head = w.embedding;
  }

  if (!c.rope_freqs_tensor.empty()) {
    ASSIGN_OR_RETURN(const TensorInfo* info, source.Get(c.rope_freqs_tensor));
    RETURN_IF_ERROR(CheckShape(*info, {hd / 2}));
    ASSIGN_OR_RETURN(TensorView view, ViewSlice(*info));
    ASSIGN_OR_RETURN(w.rope_freq_divisors, ViewToFloat(view));
  }

  w.layers.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LlamaLayerWeights& L = w.layers[l];
    ASSIGN_OR_RETURN(L.attn_norm, r.Vector(kAttnNorm, l, H));
    ASSIGN_OR_RETURN(L.wq, r.Matrix(kQ, l, q_all, H, q_rows, all_h));
    ASSIGN_OR_RETURN(L.wk, r.Matrix(kK, l, kv_all, H, kv_rows, all_h));
    ASSIGN_OR_RETURN(L.wv, r.Matrix(kV, l, kv_all, H, kv_rows, all_h));
    if (c.attention_bias || r.Has(kQBias, l)) {
      ASSIGN_OR_RETURN(L.bq, r.Vector(kQBias, l, q_all, q_rows));
      ASSIGN_OR_RETURN(L.bk, r.Vector(kKBias, l, kv_all, kv_rows));
      ASSIGN_OR_RETURN(L.bv, r.Vector(kVBias, l, kv_all, kv_rows));
    }
    ASSIGN_OR_RETURN(L.wo, r.Matrix(kO, l, H, q_all, all_h, q_rows));
    if (r.Has(kOBias, l)) {
      ASSIGN_OR_RETURN(L.bo, r.Vector(kOBias, l, H));
    }
    ASSIGN_OR_RETURN(L.ffn_norm, r.Vector(kFfnNorm, l, H));
    ASSIGN_OR_RETURN(L.w_gate, r.Matrix(kGate, l, F, H, ffn, all_h));
    ASSIGN_OR_RETURN(L.w_up, r.Matrix(kUp, l, F, H, ffn, all_h));
    ASSIGN_OR_RETURN(L.w_down, r.Matrix(kDown, l, H, F, all_h, ffn));
    if (c.mlp_bias || r.Has(kGateBias, l)) {
      ASSIGN_OR_RETURN(L.b_gate, r.Vector(kGateBias, l, F, ffn));
      ASSIGN_OR_RETURN(L.b_up, r.Vector(kUpBias, l, F, ffn));
      ASSIGN_OR_RETURN(L.b_down, r.Vector(kDownBias, l, H));
    }
  }
  return w;
}

}  // namespace tpserve
