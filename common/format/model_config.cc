#include "common/format/model_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace tpserve {
namespace {

using nlohmann::json;

// Reads fields of one config.json, trying each alias in turn; errors name the source and field.
class Fields {
 public:
  Fields(const json& j, const std::string& source) : j_(j), source_(source) {}

  const json* Find(std::initializer_list<const char*> names) const {
    for (const char* n : names) {
      auto it = j_.find(n);
      if (it != j_.end() && !it->is_null()) return &*it;
    }
    return nullptr;
  }

  absl::Status Missing(std::initializer_list<const char*> names) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": missing required field \"", *names.begin(), "\""));
  }
  absl::Status Mistyped(const char* name, const json& v, const char* want) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": field \"", name, "\" must be ", want, ", got ", v.dump()));
  }

  absl::StatusOr<int64_t> Int(std::initializer_list<const char*> names) const {
    const json* v = Find(names);
    if (v == nullptr) return Missing(names);
    if (!v->is_number_integer()) return Mistyped(*names.begin(), *v, "an integer");
    return v->get<int64_t>();
  }
  absl::StatusOr<int64_t> IntOr(std::initializer_list<const char*> names, int64_t dflt) const {
    if (Find(names) == nullptr) return dflt;
    return Int(names);
  }
  absl::StatusOr<double> Float(const json& obj, const char* name, double dflt) const {
    auto it = obj.find(name);
    if (it == obj.end() || it->is_null()) return dflt;
    if (!it->is_number()) return Mistyped(name, *it, "a number");
    return it->get<double>();
  }
  absl::StatusOr<double> FloatOr(std::initializer_list<const char*> names, double dflt) const {
    const json* v = Find(names);
    if (v == nullptr) return dflt;
    if (!v->is_number()) return Mistyped(*names.begin(), *v, "a number");
    return v->get<double>();
  }
  absl::StatusOr<bool> BoolOr(const char* name, bool dflt) const {
    const json* v = Find({name});
    if (v == nullptr) return dflt;
    if (!v->is_boolean()) return Mistyped(name, *v, "true or false");
    return v->get<bool>();
  }
  // An id or a list of ids (eos_token_id may be either).
  absl::StatusOr<std::vector<int64_t>> Ids(const char* name) const {
    const json* v = Find({name});
    std::vector<int64_t> out;
    if (v == nullptr) return out;
    if (v->is_number_integer()) {
      out.push_back(v->get<int64_t>());
      return out;
    }
    if (!v->is_array()) return Mistyped(name, *v, "an integer or a list of integers");
    for (const json& e : *v) {
      if (!e.is_number_integer()) return Mistyped(name, *v, "an integer or a list of integers");
      out.push_back(e.get<int64_t>());
    }
    return out;
  }

 private:
  const json& j_;
  const std::string& source_;
};

// Reads a rope scaling object ({"rope_type"|"type": ..., "factor": ...}).
absl::Status ParseRopeScaling(const Fields& f, const json& rs, const std::string& source,
                              RopeScaling* out) {
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    auto it = rs.find(key);
    if (it != rs.end() && it->is_string()) {
      type = it->get<std::string>();
      break;
    }
  }
  if (type.empty() || type == "default") return absl::OkStatus();
  if (type == "linear") {
    out->type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    out->type = RopeScaling::Type::kLlama3;
    ASSIGN_OR_RETURN(const double lo, f.Float(rs, "low_freq_factor", 1.0));
    ASSIGN_OR_RETURN(const double hi, f.Float(rs, "high_freq_factor", 4.0));
    ASSIGN_OR_RETURN(const double orig, f.Float(rs, "original_max_position_embeddings", 8192));
    out->low_freq_factor = static_cast<float>(lo);
    out->high_freq_factor = static_cast<float>(hi);
    out->original_max_position = static_cast<int64_t>(orig);
  } else {
    return absl::UnimplementedError(absl::StrCat(source, ": rope scaling type \"", type,
                                                 "\" is not supported (only linear and llama3)"));
  }
  ASSIGN_OR_RETURN(const double factor, f.Float(rs, "factor", 1.0));
  out->factor = static_cast<float>(factor);
  return absl::OkStatus();
}

bool IsLlamaFamily(const std::string& arch) {
  return arch == "llama" || arch == "mistral" || arch == "qwen2" || arch == "mixtral";
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseHfConfigText(const std::string& json_text,
                                              const std::string& source) {
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  const Fields f(j, source);
  ModelConfig c;
  const json* mt = f.Find({"model_type"});
  if (mt == nullptr) return f.Missing({"model_type"});
  if (!mt->is_string()) return f.Mistyped("model_type", *mt, "a string");
  c.architecture = mt->get<std::string>();

  ASSIGN_OR_RETURN(c.hidden_size, f.Int({"hidden_size", "n_embd", "d_model"}));
  ASSIGN_OR_RETURN(c.num_layers, f.Int({"num_hidden_layers", "n_layer", "num_layers"}));
  ASSIGN_OR_RETURN(c.num_heads, f.Int({"num_attention_heads", "n_head"}));
  ASSIGN_OR_RETURN(c.vocab_size, f.Int({"vocab_size"}));
  if (c.architecture == "gpt2") {
    ASSIGN_OR_RETURN(c.intermediate_size, f.IntOr({"n_inner"}, 4 * c.hidden_size));
  } else {
    ASSIGN_OR_RETURN(c.intermediate_size, f.Int({"intermediate_size", "ffn_dim", "d_ff"}));
  }
  ASSIGN_OR_RETURN(c.num_kv_heads, f.IntOr({"num_key_value_heads"}, c.num_heads));
  ASSIGN_OR_RETURN(c.head_dim,
                   f.IntOr({"head_dim"}, c.num_heads > 0 ? c.hidden_size / c.num_heads : 0));
  ASSIGN_OR_RETURN(c.max_position, f.IntOr({"max_position_embeddings", "n_positions"}, 0));
  ASSIGN_OR_RETURN(const double eps,
                   f.FloatOr({"rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"}, 1e-6));
  c.rms_norm_eps = static_cast<float>(eps);

  // RoPE: transformers 5 may put theta and scaling under rope_parameters instead.
  ASSIGN_OR_RETURN(double theta, f.FloatOr({"rope_theta"}, 10000.0));
  if (const json* rp = f.Find({"rope_parameters"}); rp != nullptr && rp->is_object()) {
    ASSIGN_OR_RETURN(theta, f.Float(*rp, "rope_theta", theta));
    RETURN_IF_ERROR(ParseRopeScaling(f, *rp, source, &c.rope_scaling));
  }
  c.rope_theta = static_cast<float>(theta);
  if (const json* rs = f.Find({"rope_scaling"}); rs != nullptr) {
    if (!rs->is_object()) return f.Mistyped("rope_scaling", *rs, "an object or null");
    RETURN_IF_ERROR(ParseRopeScaling(f, *rs, source, &c.rope_scaling));
  }

  // PretrainedConfig ties by default; the Llama-family configs override it to false.
  ASSIGN_OR_RETURN(c.tie_word_embeddings,
                   f.BoolOr("tie_word_embeddings", !IsLlamaFamily(c.architecture)));
  ASSIGN_OR_RETURN(c.attention_bias, f.BoolOr("attention_bias", false));
  if (c.architecture == "qwen2") c.attention_bias = true;  // Qwen2 always has q/k/v biases
  ASSIGN_OR_RETURN(c.mlp_bias, f.BoolOr("mlp_bias", false));

  ASSIGN_OR_RETURN(std::vector<int64_t> bos, f.Ids("bos_token_id"));
  if (!bos.empty()) c.bos_token_id = bos[0];
  ASSIGN_OR_RETURN(c.eos_token_ids, f.Ids("eos_token_id"));

  // Qwen2 carries sliding_window even when use_sliding_window is false.
  ASSIGN_OR_RETURN(const bool use_sw, f.BoolOr("use_sliding_window", true));
  if (use_sw) {
    ASSIGN_OR_RETURN(c.sliding_window, f.IntOr({"sliding_window"}, 0));
  }

  if (const json* act = f.Find({"hidden_act", "activation_function", "hidden_activation"});
      act != nullptr && act->is_string()) {
    c.hidden_act = act->get<std::string>();
  }
  return c;
}

absl::StatusOr<ModelConfig> ParseHfConfig(const std::string& config_json_path) {
  ASSIGN_OR_RETURN(const std::string text, ReadFile(config_json_path));
  return ParseHfConfigText(text, config_json_path);
}

absl::Status MergeGenerationConfig(const std::string& generation_config_path, ModelConfig* config) {
  std::error_code ec;
  if (!std::filesystem::exists(generation_config_path, ec)) return absl::OkStatus();
  ASSIGN_OR_RETURN(const std::string text, ReadFile(generation_config_path));
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(generation_config_path, ": not a JSON object"));
  }
  const Fields f(j, generation_config_path);
  ASSIGN_OR_RETURN(std::vector<int64_t> eos, f.Ids("eos_token_id"));
  if (!eos.empty()) config->eos_token_ids = std::move(eos);
  ASSIGN_OR_RETURN(std::vector<int64_t> bos, f.Ids("bos_token_id"));
  if (!bos.empty()) config->bos_token_id = bos[0];
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& g) {
  ModelConfig c;
  ASSIGN_OR_RETURN(c.architecture, g.GetString("general.architecture"));
  const std::string p = c.architecture + ".";
  ASSIGN_OR_RETURN(c.num_layers, g.GetInt(p + "block_count"));
  ASSIGN_OR_RETURN(c.hidden_size, g.GetInt(p + "embedding_length"));
  ASSIGN_OR_RETURN(c.intermediate_size, g.GetInt(p + "feed_forward_length"));
  ASSIGN_OR_RETURN(c.num_heads, g.GetInt(p + "attention.head_count"));
  c.num_kv_heads = c.num_heads;
  if (g.FindMeta(p + "attention.head_count_kv") != nullptr) {
    ASSIGN_OR_RETURN(c.num_kv_heads, g.GetInt(p + "attention.head_count_kv"));
  }
  c.head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
  for (const char* k : {"attention.key_length", "rope.dimension_count"}) {
    if (g.FindMeta(p + k) != nullptr) {
      ASSIGN_OR_RETURN(c.head_dim, g.GetInt(p + k));
      break;
    }
  }
  if (g.FindMeta(p + "context_length") != nullptr) {
    ASSIGN_OR_RETURN(c.max_position, g.GetInt(p + "context_length"));
  }
  if (g.FindMeta(p + "rope.freq_base") != nullptr) {
    ASSIGN_OR_RETURN(const double theta, g.GetFloat(p + "rope.freq_base"));
    c.rope_theta = static_cast<float>(theta);
  }
  for (const char* k : {"attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"}) {
    if (g.FindMeta(p + k) != nullptr) {
      ASSIGN_OR_RETURN(const double eps, g.GetFloat(p + k));
      c.rms_norm_eps = static_cast<float>(eps);
      break;
    }
  }
  if (g.FindMeta(p + "rope.scaling.type") != nullptr) {
    ASSIGN_OR_RETURN(const std::string type, g.GetString(p + "rope.scaling.type"));
    if (type == "linear") {
      c.rope_scaling.type = RopeScaling::Type::kLinear;
    } else if (type != "none") {
      return absl::UnimplementedError(
          absl::StrCat(g.path(), ": ", p, "rope.scaling.type \"", type, "\" is not supported"));
    }
  }
  if (g.FindMeta(p + "rope.scaling.factor") != nullptr) {
    ASSIGN_OR_RETURN(const double factor, g.GetFloat(p + "rope.scaling.factor"));
    c.rope_scaling.factor = static_cast<float>(factor);
  }
  if (g.FindMeta(p + "rope.scaling.original_context_length") != nullptr) {
    ASSIGN_OR_RETURN(c.rope_scaling.original_max_position,
                     g.GetInt(p + "rope.scaling.original_context_length"));
  }
  if (g.FindMeta(p + "vocab_size") != nullptr) {
    ASSIGN_OR_RETURN(c.vocab_size, g.GetInt(p + "vocab_size"));
  } else if (const GgufValue* tokens = g.FindMeta("tokenizer.ggml.tokens")) {
    c.vocab_size = static_cast<int64_t>(tokens->size());
  } else if (const TensorInfo* emb = g.Find("token_embd.weight"); emb && !emb->shape.empty()) {
    c.vocab_size = emb->shape[0];
  }
  if (g.FindMeta(p + "attention.sliding_window") != nullptr) {
    ASSIGN_OR_RETURN(c.sliding_window, g.GetInt(p + "attention.sliding_window"));
  }
  c.tie_word_embeddings = g.Find("output.weight") == nullptr;
  c.attention_bias = g.Find("blk.0.attn_q.bias") != nullptr;
  c.mlp_bias = g.Find("blk.0.ffn_up.bias") != nullptr;
  // llama.cpp's converter permutes q/k rows of llama models for NORM (interleaved) RoPE; qwen2
  // and most others run NEOX style on unpermuted weights.
  c.rope_interleaved = c.architecture == "llama";
  if (g.Find("rope_freqs.weight") != nullptr) c.rope_freqs_tensor = "rope_freqs.weight";
  c.hidden_act = "silu";
  if (g.FindMeta("tokenizer.ggml.bos_token_id") != nullptr) {
    ASSIGN_OR_RETURN(c.bos_token_id, g.GetInt("tokenizer.ggml.bos_token_id"));
  }
  for (const char* k : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"}) {
    if (g.FindMeta(k) == nullptr) continue;
    ASSIGN_OR_RETURN(const int64_t id, g.GetInt(k));
    if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end()) {
      c.eos_token_ids.push_back(id);
    }
  }
  return c;
}

absl::Status ValidateConfig(const ModelConfig& c) {
  const auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("model config (", c.architecture, "): ", what));
  };
  const std::pair<const char*, int64_t> positive[] = {
      {"hidden_size", c.hidden_size}, {"num_layers", c.num_layers},
      {"num_heads", c.num_heads},     {"num_kv_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},       {"intermediate_size", c.intermediate_size},
      {"vocab_size", c.vocab_size}};
  for (const auto& [name, v] : positive) {
    if (v <= 0) return bad(absl::StrCat(name, " must be positive, got ", v));
  }
  if (c.hidden_size % c.num_heads != 0 && c.head_dim * c.num_heads != c.hidden_size) {
    return bad(
        absl::StrCat("num_heads ", c.num_heads, " does not divide hidden_size ", c.hidden_size));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return bad(
        absl::StrCat("num_kv_heads ", c.num_kv_heads, " does not divide num_heads ", c.num_heads));
  }
  if (c.max_position < 0) return bad(absl::StrCat("max_position is negative: ", c.max_position));
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) {
    return bad(absl::StrCat("rope_theta must be positive, got ", c.rope_theta));
  }
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps)) {
    return bad(absl::StrCat("rms_norm_eps must be positive, got ", c.rms_norm_eps));
  }
  if (c.rope_scaling.type != RopeScaling::Type::kNone) {
    if (!(c.rope_scaling.factor > 0)) {
      return bad(absl::StrCat("rope_scaling.factor must be positive, got ", c.rope_scaling.factor));
    }
    if (c.rope_scaling.type == RopeScaling::Type::kLlama3 &&
        (c.rope_scaling.original_max_position <= 0 ||
         !(c.rope_scaling.high_freq_factor > c.rope_scaling.low_freq_factor))) {
      return bad(
          "rope_scaling (llama3) needs original_max_position > 0 and "
          "high_freq_factor > low_freq_factor");
    }
  }
  if (c.bos_token_id >= c.vocab_size) {
    return bad(absl::StrCat("bos_token_id ", c.bos_token_id, " is outside the vocabulary (",
                            c.vocab_size, ")"));
  }
  for (int64_t id : c.eos_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return bad(
          absl::StrCat("eos_token_id ", id, " is outside the vocabulary (", c.vocab_size, ")"));
    }
  }
  if (c.sliding_window < 0) return bad("sliding_window is negative");
  return absl::OkStatus();
}

}  // namespace tpserve
