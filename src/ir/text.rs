//! The text form of a graph: one line per node, which parses back to the same graph.
//!
//! ```text
//! %0: f32[seq<=2048,64] = Input(name:"x")()
//! %1: f32[64,64] = Weight(name:"w")()
//! %2: f32[seq<=2048,64] = MatMul(transpose_a:false,transpose_b:false)(%0, %1)
//! out y = %2
//! ```
//!
//! The part before `=` is the node's id, output dtype and shape, then `sr(stream)` when it rounds
//! stochastically and `keep_f32` when marked. After `=` comes the op, printed with RON (so its
//! attributes print and parse through serde and the parser does not grow with the op set), then
//! the operands.

use std::fmt;

use crate::dtype::{DType, Rounding};
use crate::error::{Error, Result};
use crate::ir::graph::{Graph, Node, NodeId};
use crate::ir::op::Op;
use crate::ir::passes::validate;
use crate::shape::{Dim, Shape};

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, node) in self.nodes.iter().enumerate() {
            write!(f, "%{i}: {}{}", node.dtype, node.shape)?;
            if let Rounding::Stochastic { stream } = node.rounding {
                write!(f, " sr({stream})")?;
            }
            if node.keep_f32 {
                f.write_str(" keep_f32")?;
            }
            let op = ron::to_string(&node.op).map_err(|_| fmt::Error)?;
            let args: Vec<String> = node.inputs.iter().map(|i| format!("%{}", i.0)).collect();
            writeln!(f, " = {op}({})", args.join(", "))?;
        }
        for (name, id) in &self.outputs {
            writeln!(f, "out {name} = %{}", id.0)?;
        }
        Ok(())
    }
}

fn perr(line: usize, msg: impl Into<String>) -> Error {
    Error::Parse {
        line,
        msg: msg.into(),
    }
}

fn parse_id(line: usize, s: &str) -> Result<usize> {
    s.trim()
        .strip_prefix('%')
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| perr(line, format!("expected a node id like %3, got `{s}`")))
}

fn parse_dim(line: usize, s: &str) -> Result<Dim> {
    if let Some((name, max)) = s.split_once("<=") {
        let max = max
            .parse()
            .map_err(|_| perr(line, format!("bad maximum in `{s}`")))?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(perr(line, format!("bad symbol name in `{s}`")));
        }
        return Ok(Dim::Sym(name.to_string(), max));
    }
    s.parse()
        .map(Dim::Fixed)
        .map_err(|_| perr(line, format!("bad dimension `{s}`")))
}

/// `f32[2,seq<=8] sr(3) keep_f32` → dtype, shape, rounding, keep flag.
fn parse_type(line: usize, s: &str) -> Result<(DType, Shape, Rounding, bool)> {
    let open = s
        .find('[')
        .ok_or_else(|| perr(line, "expected dtype[shape]"))?;
    let close = s[open..]
        .find(']')
        .map(|c| open + c)
        .ok_or_else(|| perr(line, "unclosed shape"))?;
    let dtype: DType = s[..open]
        .trim()
        .parse()
        .map_err(|e: Error| perr(line, e.to_string()))?;
    let inner = &s[open + 1..close];
    let dims = if inner.trim().is_empty() {
        vec![]
    } else {
        inner
            .split(',')
            .map(|d| parse_dim(line, d.trim()))
            .collect::<Result<_>>()?
    };
    let (mut rounding, mut keep) = (Rounding::NearestEven, false);
    for flag in s[close + 1..].split_whitespace() {
        if flag == "keep_f32" {
            keep = true;
        } else if let Some(n) = flag.strip_prefix("sr(").and_then(|r| r.strip_suffix(')')) {
            let stream = n
                .parse()
                .map_err(|_| perr(line, format!("bad stream in `{flag}`")))?;
            rounding = Rounding::Stochastic { stream };
        } else {
            return Err(perr(line, format!("unknown flag `{flag}`")));
        }
    }
    Ok((dtype, Shape(dims), rounding, keep))
}

impl Graph {
    /// Parses the text form printed by `Display`, then validates the graph.
    pub fn parse(text: &str) -> Result<Graph> {
        let mut g = Graph::new();
        for (k, raw) in text.lines().enumerate() {
            let line = k + 1;
            let s = raw.trim();
            if s.is_empty() || s.starts_with('#') {
                continue;
            }
            let (lhs, rhs) = s
                .split_once(" = ")
                .ok_or_else(|| perr(line, "expected `lhs = rhs`"))?;
            if let Some(name) = lhs.strip_prefix("out ") {
                let id = parse_id(line, rhs)?;
                g.output(name.trim(), NodeId(id))
                    .map_err(|e| perr(line, e.to_string()))?;
                continue;
            }
            let (id, ty) = lhs
                .split_once(':')
                .ok_or_else(|| perr(line, "expected `%id: type`"))?;
            let id = parse_id(line, id)?;
            if id != g.nodes.len() {
                return Err(perr(
                    line,
                    format!("expected node %{}, got %{id}", g.nodes.len()),
                ));
            }
            let (dtype, shape, rounding, keep_f32) = parse_type(line, ty)?;
            let args_at = rhs
                .rfind('(')
                .filter(|_| rhs.ends_with(')'))
                .ok_or_else(|| perr(line, "expected `Op(..)(operands)`"))?;
            let op: Op = ron::from_str(&rhs[..args_at])
                .map_err(|e| perr(line, format!("bad op `{}`: {e}", &rhs[..args_at])))?;
            let args = &rhs[args_at + 1..rhs.len() - 1];
            let inputs = args
                .split(',')
                .filter(|a| !a.trim().is_empty())
                .map(|a| parse_id(line, a).map(NodeId))
                .collect::<Result<Vec<_>>>()?;
            g.push(Node {
                op,
                inputs,
                shape,
                dtype,
                rounding,
                keep_f32,
            });
        }
        validate(&g)?;
        Ok(g)
    }
}
