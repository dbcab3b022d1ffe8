//! A BERT-family sentence encoder (BERT, MiniLM; feature `models` for loading): word + position +
//! token-type embeddings, post-LayerNorm blocks with erf GELU, a key-padding mask for a batch of
//! sentences of different lengths, then mean pooling over the real tokens (or the first, CLS)
//! and L2 normalisation, as sentence-transformers does by default. One program with the batch
//! size and the sentence length as symbols serves every batch. Weight names are Hugging Face's
//! (`embeddings.…`, `encoder.layer.{l}.…`, with or without a `bert.` prefix in the file).
//!
//! Only the public Graph/Session API is used (settled decision 14).

#[cfg(feature = "models")]
use std::path::Path;

use crate::{DType, Dim, Error, Graph, NodeId, ReduceOp, Result, Session, Tensor, UnaryOp};

/// The shapes and constants of a BERT-family encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub eps: f64,
    /// The most sentences per batch one program takes.
    pub max_batch: usize,
}

/// How token vectors become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the sentence's real tokens (sentence-transformers' default).
    Mean,
    /// The first token's vector ([CLS]).
    Cls,
}

impl BertConfig {
    /// Every weight: name and shape.
    pub fn weights(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden;
        let mut w = vec![
            (
                "embeddings.word_embeddings.weight".to_string(),
                vec![self.vocab, h],
            ),
            (
                "embeddings.position_embeddings.weight".to_string(),
                vec![self.max_positions, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".to_string(),
                vec![self.type_vocab, h],
            ),
            ("embeddings.LayerNorm.weight".to_string(), vec![h]),
            ("embeddings.LayerNorm.bias".to_string(), vec![h]),
        ];
        for l in 0..self.layers {
            let p = |s: &str| format!("encoder.layer.{l}.{s}");
            for (name, shape) in [
                ("attention.self.query.weight", vec![h, h]),
                ("attention.self.query.bias", vec![h]),
                ("attention.self.key.weight", vec![h, h]),
                ("attention.self.key.bias", vec![h]),
                ("attention.self.value.weight", vec![h, h]),
                ("attention.self.value.bias", vec![h]),
                ("attention.output.dense.weight", vec![h, h]),
                ("attention.output.dense.bias", vec![h]),
                ("attention.output.LayerNorm.weight", vec![h]),
                ("attention.output.LayerNorm.bias", vec![h]),
                ("intermediate.dense.weight", vec![self.ffn, h]),
                ("intermediate.dense.bias", vec![self.ffn]),
                ("output.dense.weight", vec![h, self.ffn]),
                ("output.dense.bias", vec![h]),
                ("output.LayerNorm.weight", vec![h]),
                ("output.LayerNorm.bias", vec![h]),
            ] {
                w.push((p(name), shape));
            }
        }
        w
    }

    /// The encoder over a batch `[batch, seq]` (both symbols): inputs `ids` and `types` (u32
    /// `[batch, seq]`), `positions` (u32 `[seq]`: 0, 1, …), `lengths` (u32 `[batch]`: real
    /// tokens per sentence) and `pool` (f32 `[batch, 1, seq]`: each real token's weight in the
    /// pooled vector); outputs `hidden` `[batch, seq, hidden]` and `embeddings` `[batch, hidden]`
    /// (pooled, L2-normalised), in f32.
    pub fn graph(&self, dtype: DType) -> Result<Graph> {
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::InvalidArgument {
                op: "bert",
                msg: format!(
                    "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                    self.hidden, self.heads
                ),
            });
        }
        let (h, nh) = (self.hidden, self.heads);
        let hd = h / nh;
        let b = Dim::sym("batch", self.max_batch);
        let s = Dim::sym("seq", self.max_positions);
        let mut g = Graph::new();
        let w = |g: &mut Graph, name: &str, shape: &[usize]| g.weight(name, shape, dtype);
        let ids = g.input("ids", vec![b.clone(), s.clone()], DType::U32);
        let types = g.input("types", vec![b.clone(), s.clone()], DType::U32);
        let positions = g.input("positions", vec![s.clone()], DType::U32);
        let lengths = g.input("lengths", vec![b.clone()], DType::U32);
        let pool = g.input(
            "pool",
            vec![b.clone(), Dim::Fixed(1), s.clone()],
            DType::F32,
        );
        let we = w(
            &mut g,
            "embeddings.word_embeddings.weight",
            &[self.vocab, h],
        );
        let pe = w(
            &mut g,
            "embeddings.position_embeddings.weight",
            &[self.max_positions, h],
        );
        let te = w(
            &mut g,
            "embeddings.token_type_embeddings.weight",
            &[self.type_vocab, h],
        );
        let x = g.gather(we, ids)?;
        let p = g.gather(pe, positions)?;
        let t = g.gather(te, types)?;
        let x = g.add(x, t)?;
        let x = g.add(x, p)?;
        let ln = |g: &mut Graph, x: NodeId, name: &str| -> Result<NodeId> {
            let wt = w(g, &format!("{name}.weight"), &[h]);
            let bs = w(g, &format!("{name}.bias"), &[h]);
            g.layer_norm(x, Some(wt), Some(bs), self.eps)
        };
        let dense = |g: &mut Graph, x: NodeId, name: &str, out: usize, inp: usize| {
            let wt = w(g, &format!("{name}.weight"), &[out, inp]);
            let bs = w(g, &format!("{name}.bias"), &[out]);
            let y = g.matmul_t(x, wt, false, true)?;
            g.add(y, bs)
        };
        let heads = |g: &mut Graph, t: NodeId| -> Result<NodeId> {
            let t = g.reshape(
                t,
                vec![b.clone(), s.clone(), Dim::Fixed(nh), Dim::Fixed(hd)],
            )?;
            g.permute(t, &[0, 2, 1, 3])
        };
        let mut x = ln(&mut g, x, "embeddings.LayerNorm")?;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in 0..self.layers {
            let p = |s: &str| format!("encoder.layer.{l}.{s}");
            let q = dense(&mut g, x, &p("attention.self.query"), h, h)?;
            let k = dense(&mut g, x, &p("attention.self.key"), h, h)?;
            let v = dense(&mut g, x, &p("attention.self.value"), h, h)?;
            let (q, k, v) = (heads(&mut g, q)?, heads(&mut g, k)?, heads(&mut g, v)?);
            let a = g.attention(q, k, v, Some(lengths), scale, false, None)?;
            let a = g.permute(a, &[0, 2, 1, 3])?;
            let a = g.reshape(a, vec![b.clone(), s.clone(), Dim::Fixed(h)])?;
            let o = dense(&mut g, a, &p("attention.output.dense"), h, h)?;
            let o = g.add(x, o)?;
            x = ln(&mut g, o, &p("attention.output.LayerNorm"))?;
            let f = dense(&mut g, x, &p("intermediate.dense"), self.ffn, h)?;
            let f = g.unary(UnaryOp::GeluErf, f)?;
            let f = dense(&mut g, f, &p("output.dense"), h, self.ffn)?;
            let f = g.add(x, f)?;
            x = ln(&mut g, f, &p("output.LayerNorm"))?;
        }
        let x = if dtype == DType::F32 {
            x
        } else {
            g.cast(x, DType::F32)?
        };
        // Pooling as a weighted sum over the tokens, then x / max(‖x‖, 1e-12).
        let pooled = g.matmul(pool, x)?;
        let pooled = g.reshape(pooled, vec![b.clone(), Dim::Fixed(h)])?;
        let sq = g.mul(pooled, pooled)?;
        let n2 = g.reduce(ReduceOp::Sum, sq, 1)?;
        let floor = g.constant(&[1e-24], [1], DType::F32)?;
        let n2 = g.maximum(n2, floor)?;
        let inv = g.unary(UnaryOp::Rsqrt, n2)?;
        let e = g.mul(pooled, inv)?;
        g.output("hidden", x)?;
        g.output("embeddings", e)?;
        Ok(g)
    }
}

/// A BERT-family encoder on one device.
pub struct Bert {
    config: BertConfig,
    session: Session,
    program: crate::Compiled,
}

/// One batch's outputs: `[batch, seq, hidden]` token vectors and `[batch, hidden]` sentence
/// embeddings.
pub struct Encoded {
    pub hidden: Tensor,
    pub embeddings: Vec<Vec<f32>>,
}

impl Bert {
    /// Uploads every weight (asking `weight(name, shape)`) into `session` and compiles the
    /// encoder once.
    pub fn new(
        mut session: Session,
        config: BertConfig,
        dtype: DType,
        mut weight: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Bert> {
        for (name, shape) in config.weights() {
            let t = weight(&name, &shape)?;
            session.load_weight(&name, t.view(), dtype)?;
        }
        let program = session.compile(&config.graph(dtype)?)?;
        Ok(Bert {
            config,
            session,
            program,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Encodes a batch of token-id sequences (each with its special tokens), padded to the
    /// longest; `pooling` picks the sentence vector.
    pub fn encode(&mut self, batch: &[Vec<u32>], pooling: Pooling) -> Result<Encoded> {
        let bad = |msg: String| Err(Error::InvalidArgument { op: "bert", msg });
        let n = batch.len();
        let seq = batch.iter().map(Vec::len).max().unwrap_or(0);
        if n == 0 || seq == 0 {
            return bad("an empty batch or an empty sentence".to_string());
        }
        if n > self.config.max_batch || seq > self.config.max_positions {
            return bad(format!(
                "{n} sentences of up to {seq} tokens: the model takes {} sentences of {} tokens",
                self.config.max_batch, self.config.max_positions
            ));
        }
        if let Some(&t) = batch
            .iter()
            .flatten()
            .find(|&&t| t as usize >= self.config.vocab)
        {
            return bad(format!(
                "token {t} outside the vocabulary of {}",
                self.config.vocab
            ));
        }
        let mut ids = vec![0u32; n * seq];
        let mut pool = vec![0f32; n * seq];
        let mut lengths = Vec::with_capacity(n);
        for (r, sentence) in batch.iter().enumerate() {
            ids[r * seq..r * seq + sentence.len()].copy_from_slice(sentence);
            let len = sentence.len();
            lengths.push(len as u32);
            match pooling {
                Pooling::Mean => pool[r * seq..r * seq + len].fill(1.0 / len as f32),
                Pooling::Cls => pool[r * seq] = 1.0,
            }
        }
        let ids = Tensor::new(&[n, seq], ids)?;
        let types = Tensor::new(&[n, seq], vec![0u32; n * seq])?;
        let positions = Tensor::new(&[seq], (0..seq as u32).collect::<Vec<_>>())?;
        let lengths = Tensor::new(&[n], lengths)?;
        let pool = Tensor::new(&[n, 1, seq], pool)?;
        let out = self.session.run(
            &self.program,
            &[
                ("ids", ids.view()),
                ("types", types.view()),
                ("positions", positions.view()),
                ("lengths", lengths.view()),
                ("pool", pool.view()),
            ],
            &[("batch", n), ("seq", seq)],
        )?;
        let e = out.get("embeddings")?.to_f32_vec();
        let h = self.config.hidden;
        Ok(Encoded {
            hidden: out.get("hidden")?.clone(),
            embeddings: e.chunks(h).map(<[f32]>::to_vec).collect(),
        })
    }
}

/// Cosine similarities of (normalised) embeddings: their dot products.
pub fn cosine_matrix(e: &[Vec<f32>]) -> Vec<Vec<f32>> {
    e.iter()
        .map(|a| {
            e.iter()
                .map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum())
                .collect()
        })
        .collect()
}

#[cfg(feature = "models")]
impl Bert {
    /// A BERT-family encoder from a checkpoint directory (`config.json` with `BertModel`,
    /// `BertForMaskedLM` and the like, or a sentence-transformers export; `model.safetensors`).
    pub fn load(dir: &Path, session: Session, dtype: DType, max_batch: usize) -> Result<Bert> {
        let config = super::load::bert_config(dir, max_batch)?;
        let ckpt = super::load::Checkpoint::open(dir)?;
        Bert::new(session, config, dtype, |name, shape| {
            ckpt.tensor(name, shape).or_else(|first| {
                ckpt.tensor(&format!("bert.{name}"), shape)
                    .map_err(|_| first)
            })
        })
    }
}
