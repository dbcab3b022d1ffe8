//! Text in and out of a decoder (feature `models`): `tokenizer.json` through the `tokenizers`
//! crate (offline; a file's fixed padding and truncation turned off for raw encoding), a stream
//! decoder that prints tokens as they come without splitting a UTF-8 character, the end-of-text
//! ids from `config.json`/`generation_config.json`, and a seeded sampler (temperature, top-k,
//! top-p, min-p, repetition penalty; greedy at temperature 0).

use std::path::Path;

use crate::{Error, Result};

fn text_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::InvalidArgument {
        op: "tokenizer",
        msg: format!("{}: {msg}", path.display()),
    }
}

/// A checkpoint's tokenizer and its end-of-text ids.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids that end generation.
    pub eos: Vec<u32>,
}

impl Tokenizer {
    /// `dir/tokenizer.json`, with the end-of-text ids of `dir/generation_config.json` or
    /// `dir/config.json` (`eos_token_id`, a number or a list).
    pub fn load(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(text_err(&path, "missing"));
        }
        let mut inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| text_err(&path, e))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| text_err(&path, e))?;
        let mut eos = Vec::new();
        for name in ["generation_config.json", "config.json"] {
            let p = dir.join(name);
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| text_err(&p, format!("not JSON: {e}")))?;
            match v.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => eos.extend(n.as_u64().map(|x| x as u32)),
                Some(serde_json::Value::Array(a)) => {
                    eos.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
                }
                _ => {}
            }
            if !eos.is_empty() {
                break;
            }
        }
        Ok(Tokenizer { inner, eos })
    }

    /// The ids of `text` (with the tokenizer's special tokens when `special`).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let e = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::InvalidArgument {
                op: "tokenizer",
                msg: format!("encoding {text:?}: {e}"),
            })?;
        Ok(e.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::InvalidArgument {
                op: "tokenizer",
                msg: format!("decoding {} ids: {e}", ids.len()),
            })
    }

    /// A stream decoder over this tokenizer.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            tokenizer: self,
            ids: Vec::new(),
            prev: 0,
            cur: 0,
        }
    }
}

/// Decodes a growing token sequence into text pieces as tokens arrive. The text is decoded over
/// a window that starts one emitted piece back (so a decoder's rules for a leading space or "▁"
/// see the same context as in the whole text), and the new piece is what the window adds to that
/// piece's text. A window ending in U+FFFD (a UTF-8 character split across byte-level tokens) is
/// held back until the character completes.
pub struct TextStream<'t> {
    tokenizer: &'t Tokenizer,
    ids: Vec<u32>,
    /// The window: `ids[prev..]`; `ids[prev..cur]` is the last emitted piece's tokens.
    prev: usize,
    cur: usize,
}

impl TextStream<'_> {
    /// Adds a token; returns the new text, if a complete piece is ready.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        let before = self.tokenizer.decode(&self.ids[self.prev..self.cur])?;
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids[self.prev..])?;
        if text.len() <= before.len() || text.ends_with('\u{FFFD}') || !text.starts_with(&before) {
            return Ok(None);
        }
        self.prev = self.cur;
        self.cur = self.ids.len();
        Ok(Some(text[before.len()..].to_string()))
    }

    /// What is still held back at the end (an incomplete character decodes as U+FFFD).
    pub fn finish(&mut self) -> Result<Option<String>> {
        let before = self.tokenizer.decode(&self.ids[self.prev..self.cur])?;
        let text = self.tokenizer.decode(&self.ids[self.prev..])?;
        self.prev = self.cur;
        self.cur = self.ids.len();
        Ok(text
            .strip_prefix(before.as_str())
            .filter(|rest| !rest.is_empty())
            .map(str::to_string))
    }
}

/// How the next token is chosen from the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0: greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely (0: none).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of tokens already seen (1: off).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// A seeded sampler (SplitMix64: the same seed gives the same tokens on every device whose logits
/// agree).
pub struct Sampler {
    pub config: Sampling,
    state: u64,
}

impl Sampler {
    pub fn new(config: Sampling) -> Result<Sampler> {
        let c = &config;
        let ok = c.temperature >= 0.0
            && c.temperature.is_finite()
            && c.top_p > 0.0
            && c.top_p <= 1.0
            && (0.0..=1.0).contains(&c.min_p)
            && c.repetition_penalty > 0.0
            && c.repetition_penalty.is_finite();
        if !ok {
            return Err(Error::InvalidArgument {
                op: "sampling",
                msg: format!(
                    "temperature ≥ 0, top_p in (0, 1], min_p in [0, 1] and a positive \
                     repetition penalty expected: {config:?}"
                ),
            });
        }
        let state = config.seed;
        Ok(Sampler { config, state })
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next token from `logits`, given the tokens `seen` so far (for the penalty).
    pub fn next(&mut self, logits: &[f32], seen: &[u32]) -> u32 {
        let c = self.config.clone();
        let mut l: Vec<f32> = logits.to_vec();
        if c.repetition_penalty != 1.0 {
            for &t in seen {
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x > 0.0 {
                        *x / c.repetition_penalty
                    } else {
                        *x * c.repetition_penalty
                    };
                }
            }
        }
        // Ties go to the lowest id, as the runtime's argmax.
        let argmax = |l: &[f32]| {
            l.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                })
                .0 as u32
        };
        if c.temperature == 0.0 || l.is_empty() {
            return argmax(&l);
        }
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
        if c.top_k > 0 {
            idx.truncate(c.top_k);
        }
        let m = l[idx[0]];
        let mut p: Vec<f64> = idx
            .iter()
            .map(|&i| (f64::from(l[i] - m) / f64::from(c.temperature)).exp())
            .collect();
        let total: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= total);
        // min-p against the most likely, then the top-p nucleus.
        let floor = f64::from(c.min_p) * p[0];
        let mut keep = p.iter().take_while(|&&x| x >= floor).count().max(1);
        if c.top_p < 1.0 {
            let mut acc = 0.0;
            let mut n = 0;
            for &x in &p[..keep] {
                acc += x;
                n += 1;
                if acc >= f64::from(c.top_p) {
                    break;
                }
            }
            keep = n.max(1);
        }
        let total: f64 = p[..keep].iter().sum();
        let mut r = self.uniform() * total;
        for (k, &x) in p[..keep].iter().enumerate() {
            r -= x;
            if r < 0.0 {
                return idx[k] as u32;
            }
        }
        idx[keep - 1] as u32
    }
}

/// A model's chat template: `chat_template.jinja`, or `chat_template` in `tokenizer_config.json`
/// (a string, or a list of named templates, of which `default` is used), rendered with minijinja
/// and Python's string methods (minijinja-contrib), as Hugging Face's `apply_chat_template` does.
pub struct ChatTemplate {
    source: String,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// The template of `dir`, or `None` when it has none.
    pub fn load(dir: &Path) -> Result<Option<ChatTemplate>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| text_err(&config_path, format!("not JSON: {e}")))?,
            Err(_) => serde_json::Value::Null,
        };
        // A special token is a string or {"content": …}.
        let token = |name: &str| -> String {
            match config.get(name) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v
                    .get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or("")
                    .to_string(),
                None => String::new(),
            }
        };
        let file = dir.join("chat_template.jinja");
        let source = if file.exists() {
            Some(std::fs::read_to_string(&file).map_err(|e| text_err(&file, e))?)
        } else {
            match config.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        Ok(source.map(|source| ChatTemplate {
            source,
            bos: token("bos_token"),
            eos: token("eos_token"),
        }))
    }

    /// The prompt text of `messages` (role, content), ending with the assistant's turn when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[(&str, &str)], add_generation_prompt: bool) -> Result<String> {
        let err = |e: minijinja::Error| Error::InvalidArgument {
            op: "chat template",
            msg: format!("{e:#}"),
        };
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &self.source).map_err(err)?;
        let messages: minijinja::Value = messages
            .iter()
            .map(|(role, content)| {
                minijinja::Value::from_pairs([("role", *role), ("content", *content)])
            })
            .collect();
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(err)
    }
}
