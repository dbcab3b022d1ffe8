//! Loading a Hugging Face-style checkpoint directory (feature `models`): `config.json`, then
//! `model.safetensors` or the shards named by `model.safetensors.index.json`, memory-mapped.
//! F32, F16 and BF16 tensors are accepted and converted once to the storage dtype the caller
//! picks, at upload; a file's mapping is dropped when loading ends.
//!
//! Configs are honest (settled decision 8): a field the model code does not implement and that
//! would change the math (`rope_scaling`, a sliding window, biases other than Qwen2's q/k/v, an
//! activation other than SiLU) is an `Err` naming the field; informational fields and disabled
//! features are accepted. Every error names the file and the tensor or field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::Value;

use super::llama::{Llama, LlamaConfig};
use crate::{DType, Error, Result, Session, Tensor};

/// The decoder architectures `config.json` may name.
pub const DECODERS: [&str; 3] = ["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"];

fn model_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::InvalidArgument {
        op: "model",
        msg: format!("{}: {msg}", path.display()),
    }
}

/// The first entry of `architectures` ("" when absent).
fn architecture(v: &Value) -> &str {
    v.get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// A required integer field of a config.
fn usize_field(v: &Value, path: &Path, name: &str) -> Result<usize> {
    v.get(name)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| model_err(path, format!("field `{name}` missing or not an integer")))
}

/// `config.json` of `dir`, parsed.
fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| model_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| model_err(path, format!("not valid JSON: {e}")))
}

/// A Llama-family config from `dir/config.json`; `max_len` caps the KV cache (default: the
/// config's `max_position_embeddings`, at most 4096).
pub fn llama_config(dir: &Path, max_len: Option<usize>) -> Result<LlamaConfig> {
    let path = dir.join("config.json");
    let v = read_json(&path)?;
    let arch = architecture(&v);
    if !DECODERS.contains(&arch) {
        return Err(model_err(
            &path,
            format!(
                "architecture `{arch}` is not supported; supported: {}",
                DECODERS.join(", ")
            ),
        ));
    }
    let usize_field = |name: &str| usize_field(&v, &path, name);
    let opt_usize = |name: &str| v.get(name).and_then(Value::as_u64).map(|x| x as usize);
    let f64_field = |name: &str, default: f64| -> Result<f64> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x
                .as_f64()
                .ok_or_else(|| model_err(&path, format!("field `{name}` is not a number"))),
        }
    };
    let flag = |name: &str| v.get(name).and_then(Value::as_bool).unwrap_or(false);
    // Features that would change the math if ignored.
    if !matches!(v.get("rope_scaling"), None | Some(Value::Null)) {
        return Err(model_err(
            &path,
            "field `rope_scaling` is set: scaled rope is not implemented",
        ));
    }
    // transformers ≥ 5 writes `rope_parameters` {rope_theta, rope_type} instead.
    let rope = v.get("rope_parameters").filter(|r| !r.is_null());
    if let Some(t) = rope
        .and_then(|r| r.get("rope_type"))
        .and_then(Value::as_str)
        && t != "default"
    {
        return Err(model_err(
            &path,
            format!(
                "field `rope_parameters.rope_type` is `{t}`: only `default` rope is implemented"
            ),
        ));
    }
    if let Some(layers) = v.get("layer_types").and_then(Value::as_array)
        && let Some(other) = layers
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "full_attention")
    {
        return Err(model_err(
            &path,
            format!("field `layer_types` has `{other}` layers: only full attention is implemented"),
        ));
    }
    let theta = match rope.and_then(|r| r.get("rope_theta")) {
        Some(t) => t.as_f64().ok_or_else(|| {
            model_err(&path, "field `rope_parameters.rope_theta` is not a number")
        })?,
        None => f64_field("rope_theta", 10_000.0)?,
    };
    let sliding = match arch {
        // Qwen2 configs carry a window that applies only when `use_sliding_window` is true.
        "Qwen2ForCausalLM" => flag("use_sliding_window"),
        _ => !matches!(v.get("sliding_window"), None | Some(Value::Null)),
    };
    if sliding {
        return Err(model_err(
            &path,
            "field `sliding_window` is enabled: sliding-window attention is not implemented",
        ));
    }
    // Qwen2's q/k/v biases are part of the architecture (its configs may say so); elsewhere an
    // attention bias would also bias the output projection, which is not implemented.
    let unimplemented: &[&str] = if arch == "Qwen2ForCausalLM" {
        &["mlp_bias"]
    } else {
        &["attention_bias", "mlp_bias"]
    };
    for &f in unimplemented {
        if flag(f) {
            return Err(model_err(
                &path,
                format!("field `{f}` is true: not implemented"),
            ));
        }
    }
    if let Some(act) = v.get("hidden_act").and_then(Value::as_str)
        && act != "silu"
    {
        return Err(model_err(
            &path,
            format!("field `hidden_act` is `{act}`: only `silu` is implemented"),
        ));
    }
    let hidden = usize_field("hidden_size")?;
    let heads = usize_field("num_attention_heads")?;
    let config = LlamaConfig {
        vocab: usize_field("vocab_size")?,
        hidden,
        layers: usize_field("num_hidden_layers")?,
        heads,
        kv_heads: opt_usize("num_key_value_heads").unwrap_or(heads),
        head_dim: opt_usize("head_dim").unwrap_or(hidden / heads.max(1)),
        ffn: usize_field("intermediate_size")?,
        rope_theta: theta,
        rms_eps: f64_field("rms_norm_eps", 1e-6)?,
        tie_embeddings: flag("tie_word_embeddings"),
        qkv_bias: arch == "Qwen2ForCausalLM",
        max_len: max_len.unwrap_or_else(|| {
            opt_usize("max_position_embeddings")
                .unwrap_or(2048)
                .min(4096)
        }),
    };
    config.validate().map_err(|e| model_err(&path, e))?;
    Ok(config)
}

/// A BERT-family config from `dir/config.json` (`BertModel`, `BertForMaskedLM`, … or
/// `model_type: bert`); `max_batch` sentences per batch.
pub fn bert_config(dir: &Path, max_batch: usize) -> Result<super::bert::BertConfig> {
    let path = dir.join("config.json");
    let v = read_json(&path)?;
    let arch = architecture(&v);
    let bert =
        arch.starts_with("Bert") || v.get("model_type").and_then(Value::as_str) == Some("bert");
    if !bert {
        return Err(model_err(
            &path,
            format!("architecture `{arch}` is not a BERT-family encoder (BertModel, BertFor…)"),
        ));
    }
    let usize_field = |name: &str| usize_field(&v, &path, name);
    if let Some(act) = v.get("hidden_act").and_then(Value::as_str)
        && act != "gelu"
    {
        return Err(model_err(
            &path,
            format!("field `hidden_act` is `{act}`: only `gelu` (erf) is implemented"),
        ));
    }
    if let Some(p) = v.get("position_embedding_type").and_then(Value::as_str)
        && p != "absolute"
    {
        return Err(model_err(
            &path,
            format!("field `position_embedding_type` is `{p}`: only `absolute` is implemented"),
        ));
    }
    Ok(super::bert::BertConfig {
        vocab: usize_field("vocab_size")?,
        hidden: usize_field("hidden_size")?,
        layers: usize_field("num_hidden_layers")?,
        heads: usize_field("num_attention_heads")?,
        ffn: usize_field("intermediate_size")?,
        max_positions: usize_field("max_position_embeddings")?,
        type_vocab: v
            .get("type_vocab_size")
            .and_then(Value::as_u64)
            .unwrap_or(2) as usize,
        eps: v
            .get("layer_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-12),
        max_batch: max_batch.max(1),
    })
}

/// The safetensors files of a checkpoint, memory-mapped, and which file holds each tensor.
pub struct Checkpoint {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    /// Tensor name → the file (index into `files`) and its header entry, parsed once at open;
    /// data offsets are relative to `data_start`.
    index: BTreeMap<String, (usize, safetensors::tensor::TensorInfo)>,
    /// Where each file's data begins (after its 8-byte length and JSON header).
    data_start: Vec<usize>,
}

impl Checkpoint {
    /// `dir/model.safetensors`, or every shard `dir/model.safetensors.index.json` names.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let mut names: Vec<String> = Vec::new();
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        if index_path.exists() {
            let v = read_json(&index_path)?;
            let wm = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| model_err(&index_path, "no `weight_map` object"))?;
            for (tensor, file) in wm {
                let file = file.as_str().ok_or_else(|| {
                    model_err(&index_path, format!("`{tensor}`: file name not a string"))
                })?;
                if !names.iter().any(|n| n == file) {
                    names.push(file.to_string());
                }
                map.insert(tensor.clone(), file.to_string());
            }
        } else {
            names.push("model.safetensors".to_string());
            if !single.exists() {
                return Err(model_err(
                    &single,
                    "missing (and no model.safetensors.index.json beside it)",
                ));
            }
        }
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        let mut data_start = Vec::new();
        for (k, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let file = std::fs::File::open(&path).map_err(|e| model_err(&path, e))?;
            // SAFETY: the mapping is read-only and lives in `files` while views of it are used;
            // a checkpoint changed on disk under a running load is outside what we guard against
            // (as in every mmap-based loader).
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| model_err(&path, e))?;
            let (header, meta) = safetensors::SafeTensors::read_metadata(&mmap)
                .map_err(|e| model_err(&path, format!("not a valid safetensors file: {e}")))?;
            for (t, info) in meta.tensors() {
                if map.is_empty() || map.get(&t).is_some_and(|f| f == name) {
                    index.insert(t, (k, info.clone()));
                }
            }
            data_start.push(8 + header);
            files.push((path, mmap));
        }
        for (tensor, file) in &map {
            if !index.contains_key(tensor) {
                return Err(model_err(
                    &dir.join(file),
                    format!("tensor `{tensor}` (named in the index) is missing"),
                ));
            }
        }
        Ok(Checkpoint {
            files,
            index,
            data_start,
        })
    }

    /// Tensor `name`, which must have `shape`, as a host tensor in its stored dtype.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Some((k, info)) = self.index.get(name) else {
            let where_ = self
                .files
                .first()
                .map(|(p, _)| p.display().to_string())
                .unwrap_or_default();
            return Err(Error::InvalidArgument {
                op: "model",
                msg: format!("tensor `{name}` is missing from the checkpoint ({where_})"),
            });
        };
        let (path, mmap) = &self.files[*k];
        if info.shape != shape {
            return Err(model_err(
                path,
                format!(
                    "tensor `{name}` is {:?}, the config needs {shape:?}",
                    info.shape
                ),
            ));
        }
        // read_metadata validated the offsets against the file's length; checked anyway.
        let (b, e) = info.data_offsets;
        let at = self.data_start[*k];
        let bytes = mmap
            .get(at + b..at + e)
            .ok_or_else(|| model_err(path, format!("tensor `{name}`: data past the file's end")))?;
        use safetensors::Dtype;
        match info.dtype {
            Dtype::F32 => Tensor::new(shape, bytemuck::pod_collect_to_vec::<u8, f32>(bytes)),
            Dtype::F16 => Tensor::new(shape, bytemuck::pod_collect_to_vec::<u8, f16>(bytes)),
            Dtype::BF16 => Tensor::new(shape, bytemuck::pod_collect_to_vec::<u8, bf16>(bytes)),
            other => Err(model_err(
                path,
                format!("tensor `{name}` is {other:?}; F32, F16 or BF16 expected"),
            )),
        }
    }
}

impl Llama {
    /// A Llama-family decoder from a checkpoint directory into `session`, weights stored in
    /// `dtype` (converted at upload; the mappings are dropped when this returns). `max_len`
    /// caps the KV cache (see [`llama_config`]).
    pub fn load(
        dir: &Path,
        session: Session,
        dtype: DType,
        max_len: Option<usize>,
    ) -> Result<Llama> {
        let config = llama_config(dir, max_len)?;
        let ckpt = Checkpoint::open(dir)?;
        Llama::new(session, config, dtype, |name, shape| {
            ckpt.tensor(name, shape)
        })
    }
}
