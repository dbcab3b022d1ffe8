//! CPU buffers (a host tensor under a lock, written and cleared in place) and the in-place
//! state write, which costs O(elements written), never O(state size).

use std::any::Any;
use std::cell::OnceCell;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::split_axis;
use crate::backend::DeviceBuffer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Storage, StorageRef, Tensor, TensorView};

/// A tensor in host memory. The lock lets a program write a state in place.
pub struct CpuBuffer {
    pub(super) tensor: RwLock<Tensor>,
}

impl CpuBuffer {
    pub(super) fn read_lock(&self) -> RwLockReadGuard<'_, Tensor> {
        self.tensor.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write_lock(&self) -> RwLockWriteGuard<'_, Tensor> {
        self.tensor.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Copies `src` over `dst` element for element; `false` when the dtypes or lengths differ.
fn copy_storage(dst: &mut Storage, src: StorageRef<'_>) -> bool {
    fn copy<T: Copy>(d: &mut [T], s: &[T]) -> bool {
        if d.len() != s.len() {
            return false;
        }
        d.copy_from_slice(s);
        true
    }
    match (dst, src) {
        (Storage::F32(d), StorageRef::F32(s)) => copy(d, s),
        (Storage::F16(d), StorageRef::F16(s)) => copy(d, s),
        (Storage::BF16(d), StorageRef::BF16(s)) => copy(d, s),
        (Storage::U32(d), StorageRef::U32(s)) => copy(d, s),
        (Storage::I32(d), StorageRef::I32(s)) => copy(d, s),
        _ => false,
    }
}

impl DeviceBuffer for CpuBuffer {
    fn shape(&self) -> Vec<usize> {
        self.read_lock().shape().to_vec()
    }
    fn dtype(&self) -> DType {
        self.read_lock().dtype()
    }
    fn read(&self) -> Result<Tensor> {
        Ok(self.read_lock().clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    /// In place under the write lock. A tensor of another shape or dtype is `Ok(false)` (the
    /// caller then uploads a new buffer).
    fn write(&self, tensor: TensorView<'_>) -> Result<bool> {
        let mut t = self.write_lock();
        if t.shape() != tensor.shape() {
            return Ok(false);
        }
        Ok(copy_storage(t.storage_mut(), tensor.data()))
    }
    fn clear(&self) -> Result<bool> {
        let mut t = self.write_lock();
        match t.storage_mut() {
            Storage::F32(v) => v.fill(0.0),
            Storage::F16(v) => v.fill(half::f16::ZERO),
            Storage::BF16(v) => v.fill(half::bf16::ZERO),
            Storage::U32(v) => v.fill(0),
            Storage::I32(v) => v.fill(0),
        }
        Ok(true)
    }
}

pub(crate) fn cpu_buffer<'a>(buf: &'a Arc<dyn DeviceBuffer>, name: &str) -> Result<&'a CpuBuffer> {
    buf.as_any()
        .downcast_ref::<CpuBuffer>()
        .ok_or_else(|| Error::Device {
            device: "cpu".to_string(),
            msg: format!("buffer `{name}` belongs to another backend"),
        })
}

/// The element count of `shape` when both it and its byte size in `dtype` fit a `usize`.
pub(crate) fn checked_numel(shape: &[usize], dtype: DType) -> Option<usize> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    n.checked_mul(dtype.size_of())?;
    Some(n)
}

/// Writes `value` (shape `vshape`) into `state` at `offset` along `axis`.
pub(crate) fn write_state(
    name: &str,
    state: &mut Tensor,
    value: StorageRef<'_>,
    vshape: &[usize],
    axis: usize,
    offset: usize,
) -> Result<()> {
    let sshape = state.shape().to_vec();
    let (outer, s_len, inner) = split_axis(&sshape, axis);
    let v_len = vshape[axis];
    if offset.checked_add(v_len).is_none_or(|end| end > s_len) {
        return Err(Error::StateWriteOutOfRange {
            name: name.to_string(),
            axis,
            offset,
            len: v_len,
            size: s_len,
        });
    }
    fn copy<T: Copy>(
        dst: &mut [T],
        src: &[T],
        o: usize,
        s_len: usize,
        v_len: usize,
        inner: usize,
        off: usize,
    ) {
        for b in 0..o {
            let d = (b * s_len + off) * inner;
            let s = b * v_len * inner;
            dst[d..d + v_len * inner].copy_from_slice(&src[s..s + v_len * inner]);
        }
    }
    let mut storage = std::mem::replace(state, Tensor::zeros(&[0], DType::F32)).into_storage();
    match (&mut storage, value) {
        (Storage::F32(d), StorageRef::F32(s)) => copy(d, s, outer, s_len, v_len, inner, offset),
        (Storage::F16(d), StorageRef::F16(s)) => copy(d, s, outer, s_len, v_len, inner, offset),
        (Storage::BF16(d), StorageRef::BF16(s)) => copy(d, s, outer, s_len, v_len, inner, offset),
        (Storage::U32(d), StorageRef::U32(s)) => copy(d, s, outer, s_len, v_len, inner, offset),
        (Storage::I32(d), StorageRef::I32(s)) => copy(d, s, outer, s_len, v_len, inner, offset),
        (d, s) => {
            let (sd, vd) = (d.dtype(), s.dtype());
            *state = Tensor::from_storage(&sshape, storage)?;
            return Err(Error::DTypeMismatch {
                op: "write_state",
                lhs: sd,
                rhs: vd,
            });
        }
    }
    *state = Tensor::from_storage(&sshape, storage)?;
    Ok(())
}

/// The storage of state `buf` under the run's one read lock on it, taken on first use.
pub(crate) fn alias_lock<'c, 'b>(
    cell: &'c OnceCell<RwLockReadGuard<'b, Tensor>>,
    buf: &'b CpuBuffer,
) -> StorageRef<'c> {
    cell.get_or_init(|| buf.read_lock()).storage().as_ref()
}

/// The size of `s` in bytes, for the run statistics.
pub(crate) fn byte_len(s: StorageRef<'_>) -> u64 {
    s.as_bytes().len() as u64
}
