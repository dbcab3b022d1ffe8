//! Shapes with fixed and symbolic dimensions, broadcasting, and binding symbols at run time.
//!
//! A dimension is `Fixed(n)` or `Sym(name, max)` (settled decision 2): there is no arithmetic
//! on symbols, a symbolic dim matches only itself (same name and maximum) or broadcasts with a
//! fixed 1. Buffers are planned at the maximum; each run binds the symbols to actual lengths.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};

/// One dimension of a [`Shape`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dim {
    /// A size known when the graph is built.
    Fixed(usize),
    /// A size bound at each run, at most `max` (`Sym("seq", 2048)`).
    Sym(String, usize),
}

impl Dim {
    /// A symbolic dimension `name ≤ max`.
    pub fn sym(name: &str, max: usize) -> Dim {
        Dim::Sym(name.to_string(), max)
    }

    /// The largest size this dimension can take.
    pub fn max(&self) -> usize {
        match self {
            Dim::Fixed(n) => *n,
            Dim::Sym(_, m) => *m,
        }
    }

    /// The size under `bindings`.
    pub fn resolve(&self, bindings: &Bindings) -> Result<usize> {
        match self {
            Dim::Fixed(n) => Ok(*n),
            Dim::Sym(name, _) => bindings.get(name),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(name, max) => {
                write_name(f, name)?;
                write!(f, "<={max}")
            }
        }
    }
}

/// True when `name` prints bare in the text form: not empty, only ASCII letters, digits and
/// `_ . - / #` (nothing the text form uses as punctuation).
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-/#".contains(c))
}

/// Writes `name` bare when it is plain, else in double quotes with `\"`, `\\`, `\n`, `\r`,
/// `\t` and `\u{hex}` (other control characters) escaped, so every string reads back
/// (`Dim::sym` accepts any name).
pub(crate) fn write_name(f: &mut impl fmt::Write, name: &str) -> fmt::Result {
    if is_plain_name(name) {
        return f.write_str(name);
    }
    f.write_char('"')?;
    for c in name.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// The dimensions of a tensor, outermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The dimensions.
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// True when no dimension is symbolic.
    pub fn is_fixed(&self) -> bool {
        self.0.iter().all(|d| matches!(d, Dim::Fixed(_)))
    }

    /// The sizes at every symbol's maximum (what buffers are planned for).
    pub fn max_dims(&self) -> Vec<usize> {
        self.0.iter().map(Dim::max).collect()
    }

    /// The element count at the maxima (saturating at `usize::MAX`).
    pub fn max_numel(&self) -> usize {
        self.max_dims()
            .iter()
            .fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// The concrete sizes under `bindings`.
    pub fn resolve(&self, bindings: &Bindings) -> Result<Vec<usize>> {
        self.0.iter().map(|d| d.resolve(bindings)).collect()
    }

    /// The symbols this shape uses, with their maxima.
    pub fn symbols(&self) -> impl Iterator<Item = (&str, usize)> {
        self.0.iter().filter_map(|d| match d {
            Dim::Sym(n, m) => Some((n.as_str(), *m)),
            Dim::Fixed(_) => None,
        })
    }

    /// Numpy-style broadcast of two shapes (aligned from the right). A symbolic dim matches only
    /// itself or a fixed 1.
    pub fn broadcast(op: &'static str, a: &Shape, b: &Shape) -> Result<Shape> {
        let rank = a.rank().max(b.rank());
        let mut out = Vec::with_capacity(rank);
        for i in 0..rank {
            let da = (i + a.rank()).checked_sub(rank).map(|j| &a.0[j]);
            let db = (i + b.rank()).checked_sub(rank).map(|j| &b.0[j]);
            let d = match (da, db) {
                (Some(x), None) | (None, Some(x)) => x.clone(),
                (Some(x), Some(y)) if x == y => x.clone(),
                (Some(Dim::Fixed(1)), Some(y)) => y.clone(),
                (Some(x), Some(Dim::Fixed(1))) => x.clone(),
                (Some(x), Some(y)) => {
                    return Err(Error::ShapeMismatch {
                        op,
                        lhs: a.to_string(),
                        rhs: b.to_string(),
                        detail: format!("dimensions {x} and {y} do not broadcast"),
                    });
                }
                (None, None) => Dim::Fixed(1),
            };
            out.push(d);
        }
        Ok(Shape(out))
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Shape {
        Shape(d.iter().map(|&n| Dim::Fixed(n)).collect())
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Shape {
        Shape(d.iter().map(|&n| Dim::Fixed(n)).collect())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Shape {
        Shape::from(d.as_slice())
    }
}

impl From<Vec<Dim>> for Shape {
    fn from(d: Vec<Dim>) -> Shape {
        Shape(d)
    }
}

impl<const N: usize> From<[Dim; N]> for Shape {
    fn from(d: [Dim; N]) -> Shape {
        Shape(d.to_vec())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Element strides of `in_shape` laid out in `out_shape`'s index space (right-aligned), with 0
/// for broadcast dimensions.
pub fn broadcast_strides(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; out_shape.len()];
    let mut s = 1;
    for i in (0..in_shape.len()).rev() {
        let o = out_shape.len() - in_shape.len() + i;
        strides[o] = if in_shape[i] == 1 { 0 } else { s };
        s *= in_shape[i];
    }
    strides
}

/// Formats concrete sizes like a shape: `[2,3]`.
pub fn fmt_dims(d: &[usize]) -> String {
    Shape::from(d).to_string()
}

/// The values of symbolic dimensions (and other per-run scalars, such as a write offset) for
/// one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bindings(BTreeMap<String, usize>);

impl Bindings {
    /// No bindings.
    pub fn new() -> Bindings {
        Bindings::default()
    }

    /// Bind `name` to `value`; binding it again to a different value is an error.
    pub fn bind(&mut self, name: &str, value: usize) -> Result<()> {
        match self.0.get(name) {
            Some(&old) if old != value => Err(Error::DimConflict {
                name: name.to_string(),
                a: old,
                b: value,
            }),
            _ => {
                self.0.insert(name.to_string(), value);
                Ok(())
            }
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Result<usize> {
        self.0.get(name).copied().ok_or_else(|| Error::UnboundDim {
            name: name.to_string(),
        })
    }

    /// Every binding, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, usize)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
}
