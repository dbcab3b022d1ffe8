//! A Llama-family decoder (Llama, SmolLM, Qwen2-style q/k/v biases) as two polytensor programs
//! in one session: prefill over a run-time number of tokens and a one-token decode step, sharing
//! the weights and a device-resident KV cache (session states `k{l}`/`v{l}`,
//! `[1, kv_heads, max_len, head_dim]`, written in place at the run-time position `pos`).
//!
//! Per block: RMSNorm → q/k/v projections (+ biases) → rope (rotate-half, θ from the config) →
//! K and V appended to the cache → causal GQA attention over the first `pos + seq` cached rows →
//! output projection → residual; RMSNorm → SwiGLU MLP → residual. After the last block: RMSNorm,
//! then the LM head (tied to the embeddings or not) on the last position only, its logits and
//! their argmax read back. Weight names and layouts are Hugging Face's (`[out, in]` projections,
//! multiplied transposed), so a checkpoint maps onto them name for name.
//!
//! Only the public Graph/Session API is used (settled decision 14).

use crate::{DType, Dim, Error, Graph, NodeId, Offset, Result, Session, Tensor, UnaryOp};

/// The shapes and constants of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The MLP's inner width.
    pub ffn: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    /// The LM head is the embedding table (no `lm_head.weight`).
    pub tie_embeddings: bool,
    /// q/k/v projections have biases (Qwen2).
    pub qkv_bias: bool,
    /// Positions the KV cache holds (prompt and generated tokens together).
    pub max_len: usize,
}

impl LlamaConfig {
    /// Checks the shapes fit together; an `Err` names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument { op: "llama", msg });
        for (name, v) in [
            ("vocab", self.vocab),
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("ffn", self.ffn),
            ("max_len", self.max_len),
        ] {
            if v == 0 {
                return bad(format!("config field `{name}` is 0"));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "`heads` {} is not a multiple of `kv_heads` {}",
                self.heads, self.kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("`head_dim` {} is odd (rope pairs)", self.head_dim));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta >= 1.0) {
            return bad(format!("`rope_theta` {} must be ≥ 1", self.rope_theta));
        }
        if u32::try_from(self.vocab).is_err() {
            return bad(format!("`vocab` {} over u32 token ids", self.vocab));
        }
        Ok(())
    }

    /// Parameters of every weight of [`LlamaConfig::weights`].
    pub fn parameters(&self) -> usize {
        self.weights()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// FLOPs of a prefill of `tokens` tokens: 2 × non-embedding parameters × tokens, attention
    /// (QKᵀ and PV over the causal half), and the LM head on the last row only.
    pub fn prefill_flops(&self, tokens: usize) -> f64 {
        let t = tokens as f64;
        // The embedding (and an untied head, counted once below) are not per-token matmuls.
        let tables = if self.tie_embeddings { 1 } else { 2 };
        let non_embed = (self.parameters() - tables * self.vocab * self.hidden) as f64;
        let attn = 4.0 * (self.layers * self.heads * self.head_dim) as f64 * t * (t + 1.0) / 2.0;
        2.0 * non_embed * t + attn + 2.0 * (self.vocab * self.hidden) as f64
    }

    /// Every weight the model reads: Hugging Face name and shape.
    pub fn weights(&self) -> Vec<(String, Vec<usize>)> {
        let (h, q, kv) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        );
        let mut w = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            w.push((p("input_layernorm.weight"), vec![h]));
            w.push((p("self_attn.q_proj.weight"), vec![q, h]));
            w.push((p("self_attn.k_proj.weight"), vec![kv, h]));
            w.push((p("self_attn.v_proj.weight"), vec![kv, h]));
            if self.qkv_bias {
                w.push((p("self_attn.q_proj.bias"), vec![q]));
                w.push((p("self_attn.k_proj.bias"), vec![kv]));
                w.push((p("self_attn.v_proj.bias"), vec![kv]));
            }
            w.push((p("self_attn.o_proj.weight"), vec![h, q]));
            w.push((p("post_attention_layernorm.weight"), vec![h]));
            w.push((p("mlp.gate_proj.weight"), vec![self.ffn, h]));
            w.push((p("mlp.up_proj.weight"), vec![self.ffn, h]));
            w.push((p("mlp.down_proj.weight"), vec![h, self.ffn]));
        }
        w.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_embeddings {
            w.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        }
        w
    }

    /// The decoder over `seq` new tokens (fixed, or a symbol bound per run) at the run-time
    /// position `pos`, weights and activations in `dtype`. Inputs: `ids` (u32 `[seq]`) and `last`
    /// (u32 `[1]`, the index of the last new token); outputs: `logits` (`[1, vocab]`) and `next`
    /// (their argmax, u32 `[1, 1]`).
    pub fn graph(&self, seq: Dim, dtype: DType) -> Result<Graph> {
        self.validate()?;
        let pos = || Offset::Sym("pos".into());
        let (h, hd) = (self.hidden, self.head_dim);
        let mut g = Graph::new();
        let ids = g.input("ids", vec![seq.clone()], DType::U32);
        let last = g.input("last", [1], DType::U32);
        let w = |g: &mut Graph, name: &str, shape: &[usize]| g.weight(name, shape, dtype);
        let embed = w(&mut g, "model.embed_tokens.weight", &[self.vocab, h]);
        let mut x = g.gather(embed, ids)?;
        let cache = [1, self.kv_heads, self.max_len, hd];
        let scale = 1.0 / (hd as f64).sqrt();
        // [seq, n·hd] → [1, n, seq, hd]
        let heads = |g: &mut Graph, t: NodeId, n: usize| -> Result<NodeId> {
            let t = g.reshape(
                t,
                vec![Dim::Fixed(1), seq.clone(), Dim::Fixed(n), Dim::Fixed(hd)],
            )?;
            g.permute(t, &[0, 2, 1, 3])
        };
        for l in 0..self.layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let (kn, vn) = (format!("k{l}"), format!("v{l}"));
            g.state(&kn, cache, dtype);
            g.state(&vn, cache, dtype);
            let n1 = w(&mut g, &p("input_layernorm.weight"), &[h]);
            let a = g.rms_norm(x, n1, self.rms_eps)?;
            let proj = |g: &mut Graph, what: &str, n: usize| -> Result<NodeId> {
                let wt = w(
                    g,
                    &p(&format!("self_attn.{what}_proj.weight")),
                    &[n * hd, h],
                );
                let y = g.matmul_t(a, wt, false, true)?;
                if self.qkv_bias {
                    let b = w(g, &p(&format!("self_attn.{what}_proj.bias")), &[n * hd]);
                    return g.add(y, b);
                }
                Ok(y)
            };
            let q = proj(&mut g, "q", self.heads)?;
            let k = proj(&mut g, "k", self.kv_heads)?;
            let v = proj(&mut g, "v", self.kv_heads)?;
            let q = heads(&mut g, q, self.heads)?;
            let q = g.rope(q, self.rope_theta, hd, false, pos())?;
            let k = heads(&mut g, k, self.kv_heads)?;
            let k = g.rope(k, self.rope_theta, hd, false, pos())?;
            let v = heads(&mut g, v, self.kv_heads)?;
            let k = g.write_state(&kn, k, 2, pos())?;
            let v = g.write_state(&vn, v, 2, pos())?;
            let o = g.attention(q, k, v, None, scale, true, Some(pos()))?;
            let o = g.permute(o, &[0, 2, 1, 3])?;
            let o = g.reshape(o, vec![seq.clone(), Dim::Fixed(self.heads * hd)])?;
            let wo = w(&mut g, &p("self_attn.o_proj.weight"), &[h, self.heads * hd]);
            let o = g.matmul_t(o, wo, false, true)?;
            x = g.add(x, o)?;
            let n2 = w(&mut g, &p("post_attention_layernorm.weight"), &[h]);
            let m = g.rms_norm(x, n2, self.rms_eps)?;
            let wg = w(&mut g, &p("mlp.gate_proj.weight"), &[self.ffn, h]);
            let wu = w(&mut g, &p("mlp.up_proj.weight"), &[self.ffn, h]);
            let wd = w(&mut g, &p("mlp.down_proj.weight"), &[h, self.ffn]);
            let gate = g.matmul_t(m, wg, false, true)?;
            let gate = g.unary(UnaryOp::Silu, gate)?;
            let up = g.matmul_t(m, wu, false, true)?;
            let act = g.mul(gate, up)?;
            let down = g.matmul_t(act, wd, false, true)?;
            x = g.add(x, down)?;
        }
        let nf = w(&mut g, "model.norm.weight", &[h]);
        let x = g.rms_norm(x, nf, self.rms_eps)?;
        // The LM head on the last new position only.
        let x = g.gather(x, last)?;
        let head = if self.tie_embeddings {
            embed
        } else {
            w(&mut g, "lm_head.weight", &[self.vocab, h])
        };
        let logits = g.matmul_t(x, head, false, true)?;
        let next = g.argmax(logits)?;
        g.output("logits", logits)?;
        g.output("next", next)?;
        Ok(g)
    }
}

/// One step's result: the last position's logits (f32) and their argmax.
#[derive(Clone, Debug)]
pub struct Step {
    pub logits: Vec<f32>,
    pub next: u32,
}

/// A Llama-family decoder on one device: weights uploaded once, prefill and decode compiled once.
pub struct Llama {
    config: LlamaConfig,
    session: Session,
    prefill: crate::Compiled,
    decode: crate::Compiled,
    pos: usize,
}

impl Llama {
    /// Into `session` (a fresh one on the device of choice, with its fallback policy):
    /// uploads every weight of `config.weights()`, asking `weight(name, shape)` for each (any
    /// float dtype; stored in `dtype`), creates the KV cache and compiles both programs.
    pub fn new(
        mut session: Session,
        config: LlamaConfig,
        dtype: DType,
        mut weight: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Llama> {
        config.validate()?;
        for (name, shape) in config.weights() {
            let t = weight(&name, &shape)?;
            if t.shape() != shape.as_slice() {
                return Err(Error::InvalidArgument {
                    op: "llama",
                    msg: format!(
                        "weight `{name}` is {:?}, the config needs {shape:?}",
                        t.shape()
                    ),
                });
            }
            session.load_weight(&name, t.view(), dtype)?;
        }
        let cache = [1, config.kv_heads, config.max_len, config.head_dim];
        for l in 0..config.layers {
            session.create_state(&format!("k{l}"), &cache, dtype)?;
            session.create_state(&format!("v{l}"), &cache, dtype)?;
        }
        let prefill = session.compile(&config.graph(Dim::sym("seq", config.max_len), dtype)?)?;
        let decode = session.compile(&config.graph(Dim::Fixed(1), dtype)?)?;
        Ok(Llama {
            config,
            session,
            prefill,
            decode,
            pos: 0,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The session (run statistics, placement).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Tokens in the cache so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Starts a new sequence (the cache's old rows are never read again: attention reads the
    /// first `pos + seq` rows, and they are written first).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Feeds `ids` at the current position (several: the prefill program; one: the decode
    /// program) and returns the last position's logits and argmax.
    pub fn forward(&mut self, ids: &[u32]) -> Result<Step> {
        if ids.is_empty() {
            return Err(Error::InvalidArgument {
                op: "llama",
                msg: "no tokens to feed".to_string(),
            });
        }
        if self.pos + ids.len() > self.config.max_len {
            return Err(Error::InvalidArgument {
                op: "llama",
                msg: format!(
                    "{} tokens at position {} exceed the cache's {} positions",
                    ids.len(),
                    self.pos,
                    self.config.max_len
                ),
            });
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab) {
            return Err(Error::InvalidArgument {
                op: "llama",
                msg: format!(
                    "token {bad} outside the vocabulary of {}",
                    self.config.vocab
                ),
            });
        }
        let n = ids.len();
        let t = Tensor::new(&[n], ids.to_vec())?;
        let last = Tensor::new(&[1], vec![(n - 1) as u32])?;
        let inputs = [("ids", t.view()), ("last", last.view())];
        let out = if n == 1 {
            self.session
                .run(&self.decode, &inputs, &[("pos", self.pos)])?
        } else {
            self.session
                .run(&self.prefill, &inputs, &[("pos", self.pos), ("seq", n)])?
        };
        self.pos += n;
        let logits = out.get("logits")?.to_f32_vec();
        let next = out
            .get("next")?
            .to_f64_vec()
            .first()
            .copied()
            .unwrap_or(0.0) as u32;
        Ok(Step { logits, next })
    }

    /// Greedy generation: prefills `prompt` from position 0, then yields up to `n` tokens, each
    /// the argmax of the previous step's logits.
    pub fn generate_greedy(&mut self, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
        self.reset();
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return Ok(out);
        }
        let mut step = self.forward(prompt)?;
        out.push(step.next);
        while out.len() < n {
            step = self.forward(&[step.next])?;
            out.push(step.next);
        }
        Ok(out)
    }
}

/// Tokens as they are produced (see [`Llama::generate`]).
pub struct Generate<'m, F: FnMut(&[f32], &[u32]) -> u32> {
    model: &'m mut Llama,
    choose: F,
    pending: Option<Vec<u32>>,
    logits: Vec<f32>,
    seen: Vec<u32>,
    left: usize,
    stop: Vec<u32>,
}

impl<F: FnMut(&[f32], &[u32]) -> u32> Iterator for Generate<'_, F> {
    type Item = Result<u32>;

    fn next(&mut self) -> Option<Result<u32>> {
        if self.left == 0 {
            return None;
        }
        // The prompt (prefill) on the first call, then the previous token (decode).
        if let Some(ids) = self.pending.take() {
            match self.model.forward(&ids) {
                Ok(step) => self.logits = step.logits,
                Err(e) => {
                    self.left = 0;
                    return Some(Err(e));
                }
            }
        }
        let next = (self.choose)(&self.logits, &self.seen);
        self.left -= 1;
        if self.stop.contains(&next) {
            self.left = 0;
            return None;
        }
        self.seen.push(next);
        if self.left > 0 {
            self.pending = Some(vec![next]);
        }
        Some(Ok(next))
    }
}

impl Llama {
    /// Generates up to `max` tokens after `prompt` (prefilled from position 0), each chosen by
    /// `choose(logits, tokens so far)` (e.g. a `text::Sampler`, or an argmax), stopping early at
    /// a token in `stop`, as an iterator: each token comes out as soon as its step ran.
    pub fn generate<F: FnMut(&[f32], &[u32]) -> u32>(
        &mut self,
        prompt: &[u32],
        max: usize,
        stop: &[u32],
        choose: F,
    ) -> Generate<'_, F> {
        self.reset();
        Generate {
            model: self,
            choose,
            pending: Some(prompt.to_vec()),
            logits: Vec::new(),
            seen: prompt.to_vec(),
            left: max,
            stop: stop.to_vec(),
        }
    }
}
