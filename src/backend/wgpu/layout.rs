//! Device layout of host tensors: f32/u32/i32 one word per element; f16/bf16 two per `u32`, with an
//! even row pitch when the innermost dimension is odd (one pad element per row, added on upload
//! and stripped on readback), and every buffer padded to 4 bytes (settled decision 1).

use std::borrow::Cow;

use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::{Storage, StorageRef, Tensor};

/// Stored row length of a tensor whose innermost dimension is `last`.
pub(crate) fn pitch(dtype: DType, last: usize) -> usize {
    match dtype {
        DType::F16 | DType::BF16 => last + (last & 1),
        DType::F32 | DType::U32 | DType::I32 => last,
    }
}

/// (innermost length, pitch, physical element count) of `shape`.
pub(crate) fn geometry(dtype: DType, shape: &[usize]) -> (usize, usize, usize) {
    let last = shape.last().copied().unwrap_or(1);
    let rows: usize = shape.iter().rev().skip(1).product();
    let p = pitch(dtype, last);
    (last, p, rows * p)
}

/// Bytes a tensor of `shape` occupies on the device, padded to 4 (at least 4: empty bindings
/// are invalid, and a zero-size tensor is never dispatched anyway).
pub(crate) fn device_bytes(dtype: DType, shape: &[usize]) -> u64 {
    let (_, _, phys) = geometry(dtype, shape);
    let b = (phys * dtype.size_of()) as u64;
    b.div_ceil(4).max(1) * 4
}

/// The device image of host data: borrowed when the layouts agree, else repacked.
pub(crate) fn to_device<'a>(data: StorageRef<'a>, shape: &[usize]) -> Cow<'a, [u8]> {
    let dtype = data.dtype();
    let (last, p, phys) = geometry(dtype, shape);
    let bytes = data.as_bytes();
    if p == last && bytes.len().is_multiple_of(4) {
        return Cow::Borrowed(bytes);
    }
    let es = dtype.size_of();
    let mut out = vec![0u8; (phys * es).div_ceil(4) * 4];
    if last > 0 {
        for (r, row) in bytes.chunks(last * es).enumerate() {
            out[r * p * es..r * p * es + row.len()].copy_from_slice(row);
        }
    }
    Cow::Owned(out)
}

/// A host tensor of `shape` from its device image.
pub(crate) fn from_device(bytes: &[u8], dtype: DType, shape: &[usize]) -> Result<Tensor> {
    let (last, p, _) = geometry(dtype, shape);
    let n: usize = shape.iter().product();
    let es = dtype.size_of();
    let mut packed = Vec::with_capacity(n * es);
    if let Some(rows) = n.checked_div(last) {
        for r in 0..rows {
            packed.extend_from_slice(&bytes[r * p * es..(r * p + last) * es]);
        }
    }
    let storage = match dtype {
        DType::F32 => Storage::F32(bytemuck::pod_collect_to_vec(&packed)),
        DType::F16 => Storage::F16(bytemuck::pod_collect_to_vec(&packed)),
        DType::BF16 => Storage::BF16(bytemuck::pod_collect_to_vec(&packed)),
        DType::U32 => Storage::U32(bytemuck::pod_collect_to_vec(&packed)),
        DType::I32 => Storage::I32(bytemuck::pod_collect_to_vec(&packed)),
    };
    Tensor::from_storage(shape, storage)
}

/// The code a kernel's dtype override takes (prelude.wgsl's `DT_*`).
pub(crate) fn code(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::U32 => 3,
        DType::I32 => 4,
    }
}
