#include "worker/model/llama.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "worker/backend/rope.h"

namespace tpserve {
namespace {

RopeParams RopeParamsOf(const ModelConfig& c) {
  RopeParams p{.head_dim = c.head_dim,
               .theta = c.rope_theta,
               .interleaved = c.rope_interleaved,
               .factor = c.rope_scaling.factor,
               .low_freq_factor = c.rope_scaling.low_freq_factor,
               .high_freq_factor = c.rope_scaling.high_freq_factor,
               .original_max_position = c.rope_scaling.original_max_position};
  switch (c.rope_scaling.type) {
    case RopeScaling::Type::kNone:
      p.scaling = RopeParams::Scaling::kNone;
      break;
    case RopeScaling::Type::kLinear:
      p.scaling = RopeParams::Scaling::kLinear;
      break;
    case RopeScaling::Type::kLlama3:
      p.scaling = RopeParams::Scaling::kLlama3;
      break;
  }
  return p;
}

}  // namespace

ShardPlan SingleRankPlan(const ModelConfig& c) {
  return ShardPlan{.ranks = {WholeModelShard(ShardInputs{.num_heads = c.num_heads,
                                                         .num_kv_heads = c.num_kv_heads,
                                                         .ffn_size = c.intermediate_size,
                                                         .vocab_size = c.vocab_size,
                                                         .world_size = 1})}};
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const TensorSource& source,
                                                             const ModelConfig& config,
                                                             const ShardPlan& plan,
                                                             Backend& backend, Communicator& comm) {
  RETURN_IF_ERROR(ValidateConfig(config));
  if (static_cast<int>(plan.ranks.size()) != comm.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat("shard plan has ", plan.ranks.size(),
                                                   " ranks, the group has ", comm.world_size()));
  }
  const RankShard& shard = plan.ranks[comm.rank()];
  ASSIGN_OR_RETURN(LlamaWeights weights, LoadLlamaWeights(source, config, shard, backend));
  return std::unique_ptr<LlamaModel>(
      new LlamaModel(config, plan, shard, std::move(weights), backend, comm));
}

LlamaModel::LlamaModel(ModelConfig config, ShardPlan plan, RankShard shard, LlamaWeights weights,
                       Backend& backend, Communicator& comm)
    : config_(std::move(config)),
      plan_(std::move(plan)),
      shard_(shard),
      w_(std::move(weights)),
      backend_(backend),
      comm_(comm),
      inv_freq_(RopeInverseFrequencies(RopeParamsOf(config_))),
      recording_prefix_(absl::StrCat("model ", absl::Hex(reinterpret_cast<uintptr_t>(this)), ":")) {
  for (size_t i = 0; i < w_.rope_freq_divisors.size(); ++i)
    inv_freq_[i] /= w_.rope_freq_divisors[i];
}

// The recorded steps hold device memory for this model's shapes and pointers.
LlamaModel::~LlamaModel() { backend_.DropRecorded(recording_prefix_); }

absl::Status LlamaModel::AllReduce(Tensor& t) {
  if (comm_.world_size() == 1) return absl::OkStatus();
  return comm_.AllReduceSum(t.data(), t.numel());
}

absl::Status LlamaModel::AddProjection(const Tensor& in, const Weight& w, const Tensor& bias,
                                       Tensor& scratch, Tensor& x) {
  if (comm_.world_size() == 1 && bias.empty()) {
    backend_.MatMulAdd(in, w, &x);  // one rank: the residual add can ride on the matmul
    return absl::OkStatus();
  }
  if (scratch.empty()) scratch = backend_.AllocUninitialized(x.shape());
  backend_.MatMul(in, w, &scratch);
  RETURN_IF_ERROR(AllReduce(scratch));  // partial sums over the ranks' heads or columns
  if (!bias.empty()) backend_.AddBias(bias, &scratch);
  backend_.Add(scratch, &x);
  return absl::OkStatus();
}

absl::Status LlamaModel::Forward(std::span<const ForwardSeq> seqs, KvCache& cache, Tensor* logits) {
  const int64_t block_size = cache.config().block_size;

  // Flatten the batch: T rows, one per fed token, sequences back to back.
  Rows rows;
  bool decode = true;  // one token per sequence
  for (const ForwardSeq& s : seqs) {
    const int64_t begin = static_cast<int64_t>(rows.tokens.size());
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    decode &= n == 1;
    for (int64_t i = 0; i < n; ++i) {
      rows.tokens.push_back(s.tokens[i]);
      rows.positions.push_back(static_cast<int32_t>(s.start_pos + i));
      rows.slots.push_back(KvCache::Slot(s.block_table, block_size, s.start_pos + i));
      if (s.all_logits || i == n - 1) rows.logit_rows.push_back(begin + i);
    }
    rows.attn.push_back(AttentionSeq{.token_begin = begin,
                                     .num_tokens = n,
                                     .start_pos = s.start_pos,
                                     .block_table = s.block_table});
  }
  const int64_t T = static_cast<int64_t>(rows.tokens.size());
  if (T == 0) return absl::InvalidArgumentError("forward: no tokens");

  // A decode step may be recorded by the backend and replayed (CUDA graphs): padded to one of a
  // few sizes with rows of no sequence (token 0, no KV slot, zeros from attention; their logits
  // are dropped), so that the batch sizes of continuous batching share recordings. With more
  // ranks only when the collectives can be part of the graph (NCCL), not when they run on the
  // host between the ops (Gloo).
  if (decode && comm_.records_in_graphs() && T <= backend_.max_recorded_rows()) {
    const int64_t padded = RecordedRows(T);
    for (int64_t t = T; t < padded; ++t) {
      rows.tokens.push_back(0);
      rows.positions.push_back(0);
      rows.slots.push_back(kNoKvSlot);
      rows.logit_rows.push_back(t);
    }
    const std::string key = absl::StrCat(recording_prefix_, " decode, ", padded, " rows (cache ",
                                         absl::Hex(reinterpret_cast<uintptr_t>(&cache)), ")");
    Tensor all;
    RETURN_IF_ERROR(backend_.RunRecorded(key, /*with_peers=*/comm_.world_size() > 1,
                                         [&] { return Run(rows, cache, &all); }));
    *logits = all.empty() ? Tensor() : all.Slice0(0, T);  // ranks other than 0 have none
    // The collectives of a recorded step are waited for here, after the graph's launch.
    return comm_.WaitPending();
  }
  return Run(rows, cache, logits);
}

absl::Status LlamaModel::Run(const Rows& rows, KvCache& cache, Tensor* logits) {
  Backend& be = backend_;
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, hd = c.head_dim;
  const int64_t nq = shard_.q_heads.size(), nkv = shard_.kv_heads.size();
  const int64_t Fl = shard_.ffn_columns.size();
  const std::vector<int32_t>& tokens = rows.tokens;
  const std::vector<int32_t>& positions = rows.positions;
  const std::vector<int64_t>& slots = rows.slots;
  const std::vector<AttentionSeq>& attn_seqs = rows.attn;
  const std::vector<int64_t>& logit_rows = rows.logit_rows;
  const int64_t T = static_cast<int64_t>(tokens.size());

  // x: the residual stream [T, H], replicated on every rank.
  // Every activation below is written before it is read.
  Tensor x = be.AllocUninitialized({T, H});
  be.Embedding(tokens, w_.embedding, shard_.vocab.begin, &x);  // zeros outside our vocab rows
  RETURN_IF_ERROR(AllReduce(x));

  Tensor cos_sin = be.AllocUninitialized({T, hd});  // [T, hd]: cos | sin of each pair's angle
  be.RopeTable(positions, inv_freq_, &cos_sin);

  const AttentionParams attn_params{.scale = 1.0f / std::sqrt(static_cast<float>(hd)),
                                    .group_size = c.num_heads / c.num_kv_heads,
                                    .q_head_begin = shard_.q_heads.begin,
                                    .kv_head_begin = shard_.kv_heads.begin,
                                    .sliding_window = c.sliding_window};

  // The activations around the matmuls in the backend's activation dtype (bf16 on a bf16 GPU);
  // x, the values summed across ranks and the logits in fp32.
  Tensor h = be.AllocActivation({T, H});       // normed input of each block
  Tensor q = be.AllocActivation({T, nq, hd});  // this rank's query heads
  Tensor k = be.AllocActivation({T, nkv, hd});
  Tensor v = be.AllocActivation({T, nkv, hd});
  Tensor attn = be.AllocActivation({T, nq, hd});  // attention output per head
  Tensor proj;  // o_proj / down_proj output, partial sum over ranks (when not added in place)
  Tensor gate = be.AllocActivation({T, Fl});
  Tensor up = be.AllocActivation({T, Fl});
  // 2-D views for the matmuls.
  Tensor q2 = q.Reshaped({T, nq * hd}), k2 = k.Reshaped({T, nkv * hd}),
         v2 = v.Reshaped({T, nkv * hd}), attn2 = attn.Reshaped({T, nq * hd});

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LlamaLayerWeights& L = w_.layers[l];
    const KvLayerView kv = cache.layer(l);

    // ---- attention block: x += o_proj(attention(rope(q), rope(k), v)) ----
    be.RmsNorm(x, L.attn_norm, c.rms_norm_eps, &h);
    {
      const Weight* w[] = {&L.wq, &L.wk, &L.wv};
      Tensor* y[] = {&q2, &k2, &v2};  // [T, nq*hd], [T, nkv*hd], [T, nkv*hd]
      be.MatMulShared(h, w, y);
    }
    if (!L.bq.empty()) {
      be.AddBias(L.bq, &q2);
      be.AddBias(L.bk, &k2);
      be.AddBias(L.bv, &v2);
    }
    be.RopeQK(cos_sin, c.rope_interleaved, &q, &k);
    be.WriteKv(k, v, slots, kv);
    be.Attention(q, kv, attn_seqs, attn_params, &attn);
    RETURN_IF_ERROR(AddProjection(attn2, L.wo, L.bo, proj, x));  // this rank's heads only

    // ---- feed-forward block: x += down(silu(gate(h)) * up(h)) ----
    be.RmsNorm(x, L.ffn_norm, c.rms_norm_eps, &h);
    {
      const Weight* w[] = {&L.w_gate, &L.w_up};
      Tensor* y[] = {&gate, &up};  // [T, Fl] each
      be.MatMulShared(h, w, y);
    }
    if (!L.b_gate.empty()) {
      be.AddBias(L.b_gate, &gate);
      be.AddBias(L.b_up, &up);
    }
    be.SiluMul(gate, up, &gate);
    RETURN_IF_ERROR(AddProjection(gate, L.w_down, L.b_down, proj, x));  // this rank's columns
  }

  // ---- LM head on the rows that need logits ----
  const int64_t R = static_cast<int64_t>(logit_rows.size());
  Tensor last = be.AllocUninitialized({R, H});
  {
    // Row gather through the backend (x may live on a GPU): an embedding lookup in x itself.
    const std::vector<int32_t> rows(logit_rows.begin(), logit_rows.end());
    be.Embedding(rows, RowsAsWeight(x), 0, &last);
  }
  Tensor local_logits = be.AllocUninitialized({R, shard_.vocab.size()});  // [R, Vl]
  Tensor last_normed = be.AllocActivation({R, H});
  be.RmsNorm(last, w_.final_norm, c.rms_norm_eps, &last_normed);
  be.MatMul(last_normed, w_.lm_head, &local_logits);
  RETURN_IF_ERROR(GatherLogits(local_logits, logits));
  // Collectives on a GPU return once enqueued: one wait per step, here, bounds a failed peer by
  // the communicator's op timeout before anyone reads a result on the host.
  return comm_.WaitPending();
}

absl::Status LlamaModel::GatherLogits(const Tensor& local, Tensor* logits) {
  const int64_t R = local.rows(), V = config_.vocab_size;
  if (comm_.world_size() == 1) {
    *logits = local;
    return absl::OkStatus();
  }
  // GatherV concatenates each rank's [R, Vr] block; rank 0 then interleaves them into [R, V].
  // Both in the backend's memory: on GPUs the logits never leave the device.
  std::vector<size_t> counts;
  for (const RankShard& r : plan_.ranks) counts.push_back(R * r.vocab.size());
  const bool root = comm_.rank() == 0;
  const Tensor gathered = root ? backend_.AllocUninitialized({R * V}) : Tensor();
  RETURN_IF_ERROR(comm_.GatherV(local.data(), counts, gathered.data(), 0));
  if (!root) {
    *logits = Tensor();
    return absl::OkStatus();
  }
  Tensor full = backend_.AllocUninitialized({R, V});
  int64_t offset = 0;
  for (const RankShard& r : plan_.ranks) {
    const int64_t Vr = r.vocab.size();
    if (R * Vr > 0) {
      backend_.CopyColumns(gathered.Slice0(offset, offset + R * Vr).Reshaped({R, Vr}),
                           r.vocab.begin, &full);
    }
    offset += R * Vr;
  }
  *logits = std::move(full);
  return absl::OkStatus();
}

}  // namespace tpserve
