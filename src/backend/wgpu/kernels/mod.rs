//! Kernel families as launch planners (settled decision 11). Each `<family>.rs` owns one family:
//! its params struct (mirroring the WGSL one), its pipeline keys and override constants (with
//! `all_keys()` for the naga test), its `supports` rule, and a planner in two halves:
//!
//! - `plan`, at compile: from the node with its operands' shapes (symbols at their maxima),
//!   dtypes and the adapter's [`Class`], the launches, each with candidate pipeline keys (kernel
//!   classes that share one binding list), a params size and a typed binding list;
//! - `bind`, at each run: from the bound sizes, one [`Go`] per planned launch (which class,
//!   params bytes and grid, or skip). The launch count is fixed at compile.
//!
//! `program.rs` and `run.rs` derive bind-group layouts from the binding lists and never look at
//! the op (they ask `Op::role`). This file is the one place that names each op's family
//! (exhaustive matches, no `_`).

mod attention;
mod cast;
mod elementwise;
mod matmul;
mod matvec;
mod movement;
mod reduce;
mod rope;
mod rows;
mod state;

use super::context::PipelineKey;
use super::layout::{device_bytes, geometry};
use crate::dtype::{DType, Rounding};
use crate::error::Result;
use crate::ir::Op;
use crate::shape::Bindings;

/// Invocations per workgroup of the one-word-per-invocation kernels.
pub(crate) const WG: u32 = 256;
const MAX_GROUPS: u32 = 65535;

/// What planners know about the adapter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Class {
    /// Kernels for CPU-emulated adapters (no workgroup memory); false on GPUs and under
    /// `POLYTENSOR_KERNELS=gpu`.
    pub cpu: bool,
    /// Subgroup sizes (min, max) when the adapter has subgroup operations.
    pub subgroups: Option<(u32, u32)>,
    pub max_invocations: u32,
    pub workgroup_bytes: u32,
    /// Largest storage binding, in bytes.
    pub binding_limit: u64,
    /// `min_storage_buffer_offset_alignment`.
    pub offset_align: u64,
    /// The backend holds a device-wide lock while it compiles a pipeline (wgpu's GL: other
    /// threads wait 6 s, then panic), so kernels that take seconds to compile are not chosen.
    pub compile_lock: bool,
}

/// Which buffer a binding refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Buf {
    /// The value of the node's operand `k`.
    Operand(usize),
    /// The node's own value.
    Out,
    /// A session state, by name (written in place).
    State(String),
    /// A scratch buffer of this many bytes, private to the node: every launch of the node that
    /// names it gets the same buffer (one launch writes partial results, a later one reads them).
    Scratch(u64),
}

/// One storage binding of a launch: binding `i` of the list is `@binding(i)` in the WGSL, and
/// the params uniform follows the last one.
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    pub buf: Buf,
    pub read_only: bool,
    /// A byte range (offset, size) instead of the whole buffer.
    pub range: Option<(u64, u64)>,
}

impl Binding {
    pub(crate) fn read(buf: Buf) -> Binding {
        Binding {
            buf,
            read_only: true,
            range: None,
        }
    }
    pub(crate) fn write(buf: Buf) -> Binding {
        Binding {
            buf,
            read_only: false,
            range: None,
        }
    }
}

/// One planned launch.
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    /// Candidate kernel classes (the run half picks one); they share the binding list.
    pub keys: Vec<PipelineKey>,
    /// Bytes of the params uniform.
    pub params_size: u64,
    pub bindings: Vec<Binding>,
}

/// A node as a planner sees it: shapes are the symbols' maxima at compile and the bound sizes
/// at each run.
pub(crate) struct NodeView<'a> {
    pub op: &'a Op,
    pub dtype: DType,
    pub rounding: Rounding,
    pub shape: &'a [usize],
    pub inputs: Vec<(DType, &'a [usize])>,
    /// Whether each operand's shape is fixed (no symbols).
    pub fixed: Vec<bool>,
}

impl NodeView<'_> {
    fn sr(&self) -> bool {
        matches!(self.rounding, Rounding::Stochastic { .. })
    }
    fn input(&self, k: usize) -> (DType, &[usize]) {
        self.inputs[k]
    }
}

/// Per-run values a planner's run half may need.
pub(crate) struct RunValues<'a> {
    pub bindings: &'a Bindings,
    /// The node's stochastic-rounding keys for this run ([0, 0] for round to nearest even).
    pub keys: [u32; 2],
}

/// What one planned launch does in this run.
#[derive(Debug)]
pub(crate) enum Go {
    /// Nothing to compute (an empty output).
    Skip,
    Dispatch {
        /// Index into the launch's candidate keys.
        class: usize,
        params: Vec<u8>,
        grid: [u32; 3],
        /// Elements this launch writes into a persistent state (run statistics).
        state_elements: u64,
    },
}

impl Go {
    fn new<P: bytemuck::Pod>(class: usize, params: &P, grid: [u32; 3]) -> Go {
        Go::Dispatch {
            class,
            params: bytemuck::bytes_of(params).to_vec(),
            grid,
            state_elements: 0,
        }
    }
}

/// Whether the adapter can run `node` (`Err` holds the reason).
pub(crate) fn supports(node: &NodeView<'_>, class: &Class) -> std::result::Result<(), String> {
    match node.op {
        // A source is bound only by the launches that read it: they check it (a weight may be
        // split over bindings by its reader).
        Op::Input { .. } | Op::Weight { .. } | Op::State { .. } | Op::Constant { .. } => Ok(()),
        Op::WriteState { .. } => state::supports(node, class),
        Op::MatMul { .. } => matmul::supports(node, class),
        Op::Unary(_) | Op::Binary(_) => elementwise::supports(node, class),
        Op::Reduce { .. } => reduce::supports(node, class),
        Op::Attention { .. } => attention::supports(node, class),
        Op::Rope { .. } => rope::supports(node, class),
        Op::Cast { .. } => cast::supports(node, class),
        Op::Softmax | Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::ArgMax => {
            rows::supports(node, class)
        }
        Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Gather => movement::supports(node, class),
    }
}

/// The launches of `node` (none for sources).
pub(crate) fn plan(node: &NodeView<'_>, class: &Class) -> Result<Vec<Launch>> {
    match node.op {
        Op::Input { .. } | Op::Weight { .. } | Op::State { .. } | Op::Constant { .. } => Ok(vec![]),
        Op::WriteState { name, .. } => Ok(state::plan(node, name)),
        Op::MatMul { transpose_b, .. } => Ok(matmul::plan(node, class, *transpose_b)),
        Op::Unary(u) => Ok(elementwise::plan(node, elementwise::Kind::Unary(*u))),
        Op::Binary(b) => Ok(elementwise::plan(node, elementwise::Kind::Binary(*b))),
        Op::Reduce { op, .. } => Ok(reduce::plan(node, class, *op)),
        Op::Cast { .. } => Ok(cast::plan(node)),
        Op::Rope { .. } => Ok(rope::plan(node)),
        Op::Softmax | Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::ArgMax => {
            rows::plan(node, class)
        }
        Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Gather => Ok(movement::plan(node, class)),
        Op::Attention { .. } => attention::plan(node, class),
    }
}

/// One [`Go`] per launch `plan` gave, under this run's sizes.
pub(crate) fn bind(
    node: &NodeView<'_>,
    class: &Class,
    launches: usize,
    run: &RunValues<'_>,
) -> Result<Vec<Go>> {
    match node.op {
        Op::Input { .. } | Op::Weight { .. } | Op::State { .. } | Op::Constant { .. } => Ok(vec![]),
        Op::WriteState {
            name, axis, offset, ..
        } => state::bind(node, name, *axis, offset, run).map(|g| vec![g]),
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => Ok(matmul::bind(
            node,
            class,
            (*transpose_a, *transpose_b),
            launches,
            run,
        )),
        Op::Unary(_) | Op::Binary(_) => Ok(vec![elementwise::bind(node, run)]),
        Op::Reduce { axis, .. } => Ok(vec![reduce::bind(node, class, *axis, run)]),
        Op::Cast { .. } => Ok(vec![cast::bind(node, run)]),
        Op::Rope { .. } => rope::bind(node, run).map(|g| vec![g]),
        Op::Softmax | Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::ArgMax => {
            Ok(vec![rows::bind(node, class, run)])
        }
        Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Gather => movement::bind(node, class, launches),
        Op::Attention { .. } => attention::bind(node, class, launches, run),
    }
}

/// Every pipeline key any planner can produce, for validation with naga.
pub(crate) fn all_keys() -> Vec<PipelineKey> {
    let mut keys = elementwise::all_keys();
    keys.extend(cast::all_keys());
    keys.extend(reduce::all_keys());
    keys.extend(rows::all_keys());
    keys.extend(state::all_keys());
    keys.extend(matmul::all_keys());
    keys.extend(movement::all_keys());
    keys.extend(attention::all_keys());
    keys.extend(rope::all_keys());
    keys
}

/// Checks every tensor of `node` against the binding limit (operands listed in `may_split` are
/// the planner's business) and the kernels' rank limit.
fn fits(
    node: &NodeView<'_>,
    class: &Class,
    may_split: &[usize],
) -> std::result::Result<(), String> {
    let limit = class.binding_limit;
    let all = std::iter::once((usize::MAX, node.dtype, node.shape))
        .chain(node.inputs.iter().enumerate().map(|(k, &(d, s))| (k, d, s)));
    for (k, dtype, shape) in all {
        if shape.len() > 8 {
            return Err(format!("rank {} over the kernels' maximum 8", shape.len()));
        }
        let bytes = device_bytes(dtype, shape);
        if bytes > limit && !may_split.contains(&k) {
            return Err(format!(
                "a {dtype}{} tensor needs {bytes} bytes, over the storage binding limit {limit}",
                crate::shape::fmt_dims(shape)
            ));
        }
    }
    Ok(())
}

/// The `ROUND` override: stochastic rounding only matters for 16-bit outputs.
pub(crate) fn round_code(out: DType, sr: bool) -> u32 {
    u32::from(sr && out.size_of() == 2 && out.is_float())
}

/// `n` workgroups folded into 2-D when over the per-dimension limit: (grid, groups per row).
fn fold(n: u32) -> ([u32; 3], u32) {
    let n = n.max(1);
    if n <= MAX_GROUPS {
        ([n, 1, 1], n)
    } else {
        ([MAX_GROUPS, n.div_ceil(MAX_GROUPS), 1], MAX_GROUPS)
    }
}

/// A grid of `items` invocations in workgroups of `wg`: (grid, invocations per grid row).
pub(crate) fn grid_of(items: u32, wg: u32) -> ([u32; 3], u32) {
    let (g, per_row) = fold(items.div_ceil(wg));
    (g, per_row * wg)
}

/// A 1-D grid of `words` invocations of the WG-wide kernels.
pub(crate) fn grid(words: u32) -> ([u32; 3], u32) {
    grid_of(words, WG)
}

/// Output words of a tensor (16-bit packs two per word, rows at the even pitch).
fn words_of(dtype: DType, shape: &[usize]) -> u32 {
    let (_, _, phys) = geometry(dtype, shape);
    let per = if dtype.size_of() == 2 { 2 } else { 1 };
    phys.div_ceil(per) as u32
}

fn fill8(v: &[usize]) -> [u32; 8] {
    let mut out = [0u32; 8];
    for (o, &x) in out.iter_mut().zip(v) {
        *o = x as u32;
    }
    out
}

fn count(shape: &[usize]) -> usize {
    shape.iter().product()
}
