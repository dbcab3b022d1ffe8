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
//! stochastically and `keep_f32` when marked. Symbol and output names print bare when they are
//! plain (letters, digits, `_ . - / #`), else double-quoted with escapes (`"my seq"<=8`), so
//! every name `Dim::sym` or `Graph::output` accepts reads back. After `=` comes the op, printed with RON (so its
//! attributes print and parse through serde and the parser does not grow with the op set), then
//! the operands.

use std::fmt;

use crate::dtype::{DType, Rounding};
use crate::error::{Error, Result};
use crate::ir::graph::{Graph, Node, NodeId};
use crate::ir::op::Op;
use crate::ir::passes::validate;
use crate::shape::{Dim, Shape, write_name};

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
            f.write_str("out ")?;
            write_name(f, name)?;
            writeln!(f, " = %{}", id.0)?;
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

/// Reads a double-quoted name at the start of `s` (escapes as `shape::write_name` writes them);
/// returns it and the text after the closing quote.
fn parse_quoted(line: usize, s: &str) -> Result<(String, &str)> {
    let body = s
        .strip_prefix('"')
        .ok_or_else(|| perr(line, format!("expected a quoted name at `{s}`")))?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => {
                let esc = chars.next().map(|(_, e)| e);
                match esc {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some('u') => {
                        let rest = &body[i + 2..];
                        let hex = rest
                            .strip_prefix('{')
                            .and_then(|r| r.split_once('}'))
                            .map(|(h, _)| h)
                            .ok_or_else(|| perr(line, "bad \\u escape: expected \\u{hex}"))?;
                        let ch = u32::from_str_radix(hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| perr(line, format!("bad \\u escape `{hex}`")))?;
                        out.push(ch);
                        // Skip `{hex}`.
                        for _ in 0..hex.len() + 2 {
                            chars.next();
                        }
                    }
                    other => {
                        return Err(perr(
                            line,
                            format!("bad escape `\\{}`", other.unwrap_or(' ')),
                        ));
                    }
                }
            }
            c => out.push(c),
        }
    }
    Err(perr(line, "unclosed quoted name"))
}

/// Splits `s` at the first `pat` that is not inside a double-quoted name.
fn split_unquoted<'s>(s: &'s str, pat: &str) -> Option<(&'s str, &'s str)> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        if quoted {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
        } else if c == '"' {
            quoted = true;
        } else if s[i..].starts_with(pat) {
            return Some((&s[..i], &s[i + pat.len()..]));
        }
    }
    None
}

/// A name as printed: bare, or quoted (the whole of `s`).
fn parse_name(line: usize, s: &str) -> Result<String> {
    let s = s.trim();
    if s.starts_with('"') {
        let (name, rest) = parse_quoted(line, s)?;
        if !rest.trim().is_empty() {
            return Err(perr(
                line,
                format!("unexpected `{rest}` after a quoted name"),
            ));
        }
        return Ok(name);
    }
    Ok(s.to_string())
}

/// One dimension at the start of `s` (`8`, `seq<=2048` or `"any name"<=2048`); returns it and
/// the rest of `s`, from the `,` or `]` after it.
fn parse_dim(line: usize, s: &str) -> Result<(Dim, &str)> {
    if s.starts_with('"') {
        let (name, rest) = parse_quoted(line, s)?;
        let rest = rest
            .strip_prefix("<=")
            .ok_or_else(|| perr(line, format!("expected `<=max` after symbol `{name}`")))?;
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let max = rest[..end]
            .parse()
            .map_err(|_| perr(line, format!("bad maximum in `{s}`")))?;
        return Ok((Dim::Sym(name, max), &rest[end..]));
    }
    let end = s.find([',', ']']).unwrap_or(s.len());
    let (tok, rest) = (s[..end].trim(), &s[end..]);
    if let Some((name, max)) = tok.split_once("<=") {
        let max = max
            .parse()
            .map_err(|_| perr(line, format!("bad maximum in `{tok}`")))?;
        if !crate::shape::is_plain_name(name) {
            return Err(perr(line, format!("bad symbol name in `{tok}`")));
        }
        return Ok((Dim::Sym(name.to_string(), max), rest));
    }
    let n = tok
        .parse()
        .map_err(|_| perr(line, format!("bad dimension `{tok}`")))?;
    Ok((Dim::Fixed(n), rest))
}

/// `f32[2,seq<=8] sr(3) keep_f32` → dtype, shape, rounding, keep flag.
fn parse_type(line: usize, s: &str) -> Result<(DType, Shape, Rounding, bool)> {
    let open = s
        .find('[')
        .ok_or_else(|| perr(line, "expected dtype[shape]"))?;
    let dtype: DType = s[..open]
        .trim()
        .parse()
        .map_err(|e: Error| perr(line, e.to_string()))?;
    let mut rest = &s[open + 1..];
    let mut dims = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Err(perr(line, "unclosed shape"));
        }
        if let Some(r) = rest.strip_prefix(']') {
            rest = r;
            break;
        }
        if !dims.is_empty() {
            rest = rest
                .strip_prefix(',')
                .ok_or_else(|| perr(line, format!("expected `,` or `]` at `{rest}`")))?
                .trim_start();
        }
        let (dim, r) = parse_dim(line, rest)?;
        dims.push(dim);
        rest = r;
    }
    let (mut rounding, mut keep) = (Rounding::NearestEven, false);
    for flag in rest.split_whitespace() {
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
            let (lhs, rhs) =
                split_unquoted(s, " = ").ok_or_else(|| perr(line, "expected `lhs = rhs`"))?;
            if let Some(name) = lhs.strip_prefix("out ") {
                let id = parse_id(line, rhs)?;
                g.output(&parse_name(line, name)?, NodeId(id))
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
