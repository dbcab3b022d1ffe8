//! Checkpoint directories (feature `models`): a Hugging Face-style directory written here from the
//! toy model's weights (config.json and safetensors, single-file and sharded, F32 and BF16) loads
//! into the same model as the weights given in code, on the CPU and every adapter; every kind of
//! broken directory is an `Err` naming the file and the tensor or field.

use std::path::{Path, PathBuf};

use polytensor::model::llama::Llama;
use polytensor::model::toy;
use polytensor::{DType, Device, FallbackPolicy, Session, Tensor};
use safetensors::tensor::TensorView as StView;

use crate::common::devices_under_test;

/// A fresh, empty directory for one test case (removed by `Dir::drop`).
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("polytensor-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config_json() -> serde_json::Value {
    let c = toy::config();
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab,
        "hidden_size": c.hidden,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.ffn,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_eps,
        "tie_word_embeddings": c.tie_embeddings,
        "max_position_embeddings": c.max_len,
        "hidden_act": "silu",
        "rope_scaling": null,
        "torch_dtype": "float32"
    })
}

/// The toy weights as (name, dtype, shape, little-endian bytes) in `dtype` (F32 or BF16).
fn toy_tensors(dtype: DType) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    toy::config()
        .weights()
        .into_iter()
        .map(|(name, shape)| {
            let t = toy::weight(&name, &shape).expect("weight");
            let (st, bytes) = match dtype {
                DType::BF16 => {
                    let t = Tensor::from_f32(&shape, t.to_f32_vec(), DType::BF16).expect("bf16");
                    let v = t.as_slice::<half::bf16>().expect("bf16").to_vec();
                    (safetensors::Dtype::BF16, bytemuck::cast_slice(&v).to_vec())
                }
                _ => {
                    let v = t.as_slice::<f32>().expect("f32").to_vec();
                    (safetensors::Dtype::F32, bytemuck::cast_slice(&v).to_vec())
                }
            };
            (name, st, shape, bytes)
        })
        .collect()
}

fn write_safetensors(path: &Path, tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, StView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), StView::new(*d, s.clone(), b).expect("view")))
        .collect();
    let bytes = safetensors::serialize(views, None).expect("serialize");
    std::fs::write(path, bytes).expect("write");
}

/// A checkpoint directory: config.json and the tensors in one file, or in two shards with an
/// index.
fn write_checkpoint(dir: &Path, dtype: DType, sharded: bool) {
    std::fs::write(dir.join("config.json"), config_json().to_string()).expect("config");
    let tensors = toy_tensors(dtype);
    if !sharded {
        write_safetensors(&dir.join("model.safetensors"), &tensors);
        return;
    }
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write_safetensors(&dir.join(names[0]), a);
    write_safetensors(&dir.join(names[1]), b);
    let mut map = serde_json::Map::new();
    for (part, file) in [(a, names[0]), (b, names[1])] {
        for (n, ..) in part {
            map.insert(n.clone(), serde_json::Value::from(file));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
}

fn deny(device: &Device) -> Session {
    let mut s = Session::new(device);
    s.set_fallback(FallbackPolicy::Deny);
    s
}

#[test]
fn a_checkpoint_loads_into_the_model_the_weights_in_code_give() {
    for (dtype, sharded) in [(DType::F32, false), (DType::F32, true), (DType::BF16, true)] {
        let dir = Dir::new(&format!("ckpt-{dtype}-{sharded}"));
        write_checkpoint(dir.path(), dtype, sharded);
        // The same weights in code (rounded to the file's dtype), on the CPU.
        let mut want = Llama::new(
            Session::new(&Device::cpu()),
            toy::config(),
            DType::F32,
            |n, s| {
                let t = toy::weight(n, s)?;
                Tensor::from_f32(s, t.to_f32_vec(), dtype)
            },
        )
        .expect("model in code");
        let want = want.forward(&toy::PROMPT).expect("forward");
        for device in devices_under_test() {
            let name = device.info().name.clone();
            let what = format!("{dtype} checkpoint (sharded: {sharded}) on {name}");
            let mut m = Llama::load(dir.path(), deny(&device), DType::F32, None)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(m.config(), &toy::config(), "{what}: config");
            let got = m.forward(&toy::PROMPT).expect("forward");
            let scale = want.logits.iter().fold(1f32, |a, x| a.max(x.abs()));
            if device.info().backend == "cpu" {
                assert_eq!(
                    got.logits, want.logits,
                    "{what}: the same weights, the same logits"
                );
            }
            for (i, (g, w)) in got.logits.iter().zip(&want.logits).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * scale,
                    "{what}: logit {i}: {g} vs {w}"
                );
            }
        }
    }
}

/// Loads `dir` on the CPU and returns the error's text (the load must fail).
fn load_err(dir: &Path) -> String {
    match Llama::load(dir, Session::new(&Device::cpu()), DType::F32, None) {
        Ok(_) => panic!("{}: loaded, an error was expected", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_checkpoints_are_errors_naming_the_file_and_the_tensor_or_field() {
    let expect = |e: &str, parts: &[&str]| {
        for p in parts {
            assert!(e.contains(p), "`{e}` does not name `{p}`");
        }
    };
    // No config.json.
    let dir = Dir::new("no-config");
    expect(&load_err(dir.path()), &["config.json"]);
    // Config variants.
    let with_config = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = Dir::new(name);
        write_checkpoint(dir.path(), DType::F32, false);
        let mut c = config_json();
        edit(&mut c);
        std::fs::write(dir.path().join("config.json"), c.to_string()).expect("config");
        load_err(dir.path())
    };
    expect(
        &with_config("arch", &|c| {
            c["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
        }),
        &[
            "config.json",
            "GPT2LMHeadModel",
            "LlamaForCausalLM",
            "Qwen2ForCausalLM",
        ],
    );
    expect(
        &with_config("rope-scaling", &|c| {
            c["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0})
        }),
        &["config.json", "rope_scaling"],
    );
    expect(
        &with_config("window", &|c| c["sliding_window"] = serde_json::json!(4096)),
        &["config.json", "sliding_window"],
    );
    expect(
        &with_config("no-hidden", &|c| {
            c.as_object_mut().expect("object").remove("hidden_size");
        }),
        &["config.json", "hidden_size"],
    );
    // A shape the config does not give.
    expect(
        &with_config("ffn", &|c| c["intermediate_size"] = serde_json::json!(255)),
        &["model.safetensors", "mlp.gate_proj.weight", "255"],
    );
    // Informational and disabled fields are fine.
    let dir = Dir::new("qwen-window-off");
    write_checkpoint(dir.path(), DType::F32, false);
    let mut c = config_json();
    c["use_sliding_window"] = serde_json::json!(false);
    c["sliding_window"] = serde_json::json!(null);
    c["bos_token_id"] = serde_json::json!(1);
    std::fs::write(dir.path().join("config.json"), c.to_string()).expect("config");
    Llama::load(dir.path(), Session::new(&Device::cpu()), DType::F32, None).expect("loads");

    // No safetensors file.
    let dir = Dir::new("no-weights");
    std::fs::write(dir.path().join("config.json"), config_json().to_string()).expect("config");
    expect(&load_err(dir.path()), &["model.safetensors", "missing"]);
    // A truncated file.
    let dir = Dir::new("truncated");
    write_checkpoint(dir.path(), DType::F32, false);
    let f = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&f).expect("read");
    std::fs::write(&f, &bytes[..bytes.len() / 2]).expect("truncate");
    expect(&load_err(dir.path()), &["model.safetensors", "safetensors"]);
    // A missing tensor.
    let dir = Dir::new("missing-tensor");
    std::fs::write(dir.path().join("config.json"), config_json().to_string()).expect("config");
    let mut t = toy_tensors(DType::F32);
    t.retain(|(n, ..)| n != "model.norm.weight");
    write_safetensors(&dir.path().join("model.safetensors"), &t);
    expect(&load_err(dir.path()), &["model.norm.weight", "missing"]);
    // A tensor in another dtype.
    let dir = Dir::new("int-tensor");
    std::fs::write(dir.path().join("config.json"), config_json().to_string()).expect("config");
    let mut t = toy_tensors(DType::F32);
    for x in t.iter_mut().filter(|x| x.0 == "model.norm.weight") {
        x.1 = safetensors::Dtype::I32;
    }
    write_safetensors(&dir.path().join("model.safetensors"), &t);
    expect(&load_err(dir.path()), &["model.norm.weight", "I32"]);
    // An index naming a tensor its shard lacks.
    let dir = Dir::new("bad-index");
    write_checkpoint(dir.path(), DType::F32, true);
    let ip = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ip).expect("index")).expect("json");
    index["weight_map"]["model.extra.weight"] =
        serde_json::json!("model-00001-of-00002.safetensors");
    std::fs::write(&ip, index.to_string()).expect("index");
    expect(
        &load_err(dir.path()),
        &["model.extra.weight", "model-00001-of-00002.safetensors"],
    );
}

/// GPT-2's byte-level alphabet: the character standing for each byte.
fn byte_chars() -> Vec<char> {
    let mut n = 0u32;
    (0u32..256)
        .map(|b| {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            if printable {
                char::from_u32(b).expect("char")
            } else {
                n += 1;
                char::from_u32(255 + n).expect("char")
            }
        })
        .collect()
}

/// A byte-level BPE tokenizer.json for the toy vocabulary: ids 0..256 are the bytes, 256..512
/// placeholder tokens; with a fixed padding and a truncation the loader must turn off.
fn write_tokenizer(dir: &Path) {
    let mut vocab = serde_json::Map::new();
    for (b, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), serde_json::Value::from(b));
    }
    for i in 256..toy::config().vocab {
        vocab.insert(format!("<x{i}>"), serde_json::Value::from(i));
    }
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let t = serde_json::json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "!"},
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), t.to_string()).expect("tokenizer");
}

#[test]
fn text_streams_whole_characters_and_padding_is_off() {
    use polytensor::model::text::Tokenizer;
    let dir = Dir::new("tokenizer");
    write_tokenizer(dir.path());
    let tok = Tokenizer::load(dir.path()).expect("tokenizer");
    let text = "héllo wörld ✓ 日本語!";
    let ids = tok.encode(text, true).expect("encode");
    // One token per byte: neither truncated to 4 nor padded to 64.
    assert_eq!(ids.len(), text.len(), "{ids:?}");
    assert_eq!(tok.decode(&ids).expect("decode"), text);
    let mut stream = tok.stream();
    let (mut out, mut held) = (String::new(), 0);
    for &id in &ids {
        match stream.push(id).expect("push") {
            Some(piece) => {
                assert!(!piece.contains('\u{FFFD}'), "a split character: {piece:?}");
                out.push_str(&piece);
            }
            None => held += 1,
        }
    }
    out.extend(stream.finish().expect("finish"));
    assert_eq!(out, text);
    assert!(
        held >= 8,
        "multi-byte characters must be held back ({held})"
    );
    // A missing tokenizer is an Err naming the file.
    let empty = Dir::new("no-tokenizer");
    let e = Tokenizer::load(empty.path())
        .err()
        .expect("missing tokenizer");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
}

#[test]
fn generate_runs_a_checkpoint_directory_end_to_end() {
    use polytensor::model::text::{Sampler, Sampling};
    let dir = Dir::new("generate");
    write_checkpoint(dir.path(), DType::F32, false);
    write_tokenizer(dir.path());
    // Greedy sampling from the logits = the model's argmax = the toy's greedy tokens.
    let mut m =
        Llama::load(dir.path(), Session::new(&Device::cpu()), DType::F32, None).expect("load");
    let want = m.generate_greedy(&toy::PROMPT, 6).expect("greedy");
    let mut greedy = Sampler::new(Sampling::default()).expect("sampler");
    let top1 = Sampler::new(Sampling {
        temperature: 0.8,
        top_k: 1,
        seed: 9,
        ..Sampling::default()
    })
    .expect("sampler");
    for mut sampler in [greedy, top1] {
        m.reset();
        let mut step = m.forward(&toy::PROMPT).expect("prefill");
        let mut got = Vec::new();
        while got.len() < 6 {
            let next = sampler.next(&step.logits, &got);
            got.push(next);
            step = m.forward(&[next]).expect("decode");
        }
        assert_eq!(got, want, "{:?}", sampler.config);
    }
    greedy = Sampler::new(Sampling {
        temperature: 1.0,
        top_p: 0.9,
        min_p: 0.05,
        repetition_penalty: 1.3,
        seed: 5,
        ..Sampling::default()
    })
    .expect("sampler");
    let mut again = Sampler::new(greedy.config.clone()).expect("sampler");
    m.reset();
    let step = m.forward(&toy::PROMPT).expect("prefill");
    let a: Vec<u32> = (0..32).map(|_| greedy.next(&step.logits, &want)).collect();
    let b: Vec<u32> = (0..32).map(|_| again.next(&step.logits, &want)).collect();
    assert_eq!(a, b, "a seed gives the same draws");
    assert!(a.iter().all(|&t| (t as usize) < toy::config().vocab));
    assert!(
        Sampler::new(Sampling {
            top_p: 0.0,
            ..Sampling::default()
        })
        .is_err()
    );
    // The CLI, on the CPU: the prompt comes back followed by the generated text.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polytensor"))
        .args(["generate", "--model"])
        .arg(dir.path())
        .args(["--prompt", "hi", "--max-tokens", "5", "--device", "cpu"])
        .output()
        .expect("run polytensor generate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("hi"), "{stdout}");
    assert!(
        stderr.contains("decode:") && stderr.contains("tok/s"),
        "{stderr}"
    );
    // A bad --dtype is a clear error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polytensor"))
        .args(["generate", "--model"])
        .arg(dir.path())
        .args(["--prompt", "hi", "--dtype", "f8", "--device", "cpu"])
        .output()
        .expect("run polytensor generate");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("f8"));
}

#[test]
fn chat_templates_render_as_transformers_does() {
    use polytensor::model::text::ChatTemplate;
    let dir = Dir::new("chat");
    assert!(
        ChatTemplate::load(dir.path())
            .expect("no template")
            .is_none()
    );
    // tokenizer_config.json: special tokens as a string and as an object, Python string methods.
    let template = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'].strip() }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
    let config = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": {"content": "</s>", "lstrip": false},
        "chat_template": template,
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).expect("config");
    let t = ChatTemplate::load(dir.path())
        .expect("load")
        .expect("a template");
    assert_eq!(
        t.render(&[("system", "be brief "), ("user", "  hi")], true)
            .expect("render"),
        "<s><|system|>be brief</s><|user|>hi</s><|assistant|>"
    );
    assert_eq!(
        t.render(&[("user", "hi")], false).expect("render"),
        "<s><|user|>hi</s>"
    );
    // A named list picks `default`; chat_template.jinja wins over the config.
    let config = serde_json::json!({"chat_template": [
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "{% for m in messages %}[{{ m.content }}]{% endfor %}"},
    ]});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).expect("config");
    let t = ChatTemplate::load(dir.path())
        .expect("load")
        .expect("a template");
    assert_eq!(t.render(&[("user", "x")], true).expect("render"), "[x]");
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('users first') }}{% endif %}ok",
    )
    .expect("jinja");
    let t = ChatTemplate::load(dir.path())
        .expect("load")
        .expect("a template");
    assert_eq!(t.render(&[("user", "x")], true).expect("render"), "ok");
    let e = t
        .render(&[("system", "x")], true)
        .expect_err("raise_exception");
    assert!(e.to_string().contains("users first"), "{e}");
    // `generate --chat` on a checkpoint with a template.
    let dir = Dir::new("chat-generate");
    write_checkpoint(dir.path(), DType::F32, false);
    write_tokenizer(dir.path());
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>",
    )
    .expect("jinja");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polytensor"))
        .args(["generate", "--chat", "--model"])
        .arg(dir.path())
        .args(["--prompt", "hi", "--max-tokens", "3", "--device", "cpu"])
        .output()
        .expect("run polytensor generate --chat");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
