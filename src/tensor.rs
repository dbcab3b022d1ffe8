//! Host tensors: an owned [`Tensor`] (shape + typed data) and a borrowed [`TensorView`], which is
//! how a run takes its inputs without copying them.

use half::{bf16, f16};

use crate::dtype::{self, DType};
use crate::error::{Error, Result};
use crate::shape::fmt_dims;

/// Typed element storage of a host tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
}

/// Borrowed typed element storage.
#[derive(Clone, Copy, Debug)]
pub enum StorageRef<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    U32(&'a [u32]),
    I32(&'a [i32]),
}

/// A Rust type that is the host representation of a [`DType`].
pub trait Element: Copy + bytemuck::Pod + Send + Sync + 'static {
    /// The dtype this type stores.
    const DTYPE: DType;
    /// Wraps a slice as typed storage.
    fn wrap(data: &[Self]) -> StorageRef<'_>;
    /// Wraps an owned vector as typed storage.
    fn wrap_vec(data: Vec<Self>) -> Storage;
}

macro_rules! element {
    ($t:ty, $v:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$v;
            fn wrap(data: &[Self]) -> StorageRef<'_> {
                StorageRef::$v(data)
            }
            fn wrap_vec(data: Vec<Self>) -> Storage {
                Storage::$v(data)
            }
        }
    };
}
element!(f32, F32);
element!(f16, F16);
element!(bf16, BF16);
element!(u32, U32);
element!(i32, I32);

impl Storage {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        self.as_ref().dtype()
    }

    /// The element count.
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A borrowed view.
    pub fn as_ref(&self) -> StorageRef<'_> {
        match self {
            Storage::F32(v) => StorageRef::F32(v),
            Storage::F16(v) => StorageRef::F16(v),
            Storage::BF16(v) => StorageRef::BF16(v),
            Storage::U32(v) => StorageRef::U32(v),
            Storage::I32(v) => StorageRef::I32(v),
        }
    }

    /// `n` zeros of `dtype`.
    pub fn zeros(dtype: DType, n: usize) -> Storage {
        match dtype {
            DType::F32 => Storage::F32(vec![0.0; n]),
            DType::F16 => Storage::F16(vec![f16::ZERO; n]),
            DType::BF16 => Storage::BF16(vec![bf16::ZERO; n]),
            DType::U32 => Storage::U32(vec![0; n]),
            DType::I32 => Storage::I32(vec![0; n]),
        }
    }

    /// Converts f32 values to `dtype` (round to nearest even for f16/bf16; Rust `as`
    /// semantics, saturating with NaN → 0, for the integer dtypes).
    pub fn from_f32(dtype: DType, src: Vec<f32>) -> Storage {
        match dtype {
            DType::F32 => Storage::F32(src),
            DType::F16 => Storage::F16(dtype::narrow_f16(&src)),
            DType::BF16 => Storage::BF16(dtype::narrow_bf16(&src)),
            DType::U32 => Storage::U32(src.iter().map(|&x| x as u32).collect()),
            DType::I32 => Storage::I32(src.iter().map(|&x| x as i32).collect()),
        }
    }
}

impl Storage {
    /// `n` zeros of `dtype`, or an `Err` when the byte size overflows or the memory cannot be
    /// reserved (never an abort on a huge request).
    pub fn try_zeros(dtype: DType, n: usize) -> Result<Storage> {
        fn filled<T: Clone>(n: usize, zero: T, dtype: DType) -> Result<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n)
                .map_err(|_| Error::Unsupported(format!("cannot allocate {n} {dtype} elements")))?;
            v.resize(n, zero);
            Ok(v)
        }
        n.checked_mul(dtype.size_of()).ok_or_else(|| {
            Error::Unsupported(format!("{n} {dtype} elements overflow a byte size"))
        })?;
        Ok(match dtype {
            DType::F32 => Storage::F32(filled(n, 0.0, dtype)?),
            DType::F16 => Storage::F16(filled(n, f16::ZERO, dtype)?),
            DType::BF16 => Storage::BF16(filled(n, bf16::ZERO, dtype)?),
            DType::U32 => Storage::U32(filled(n, 0, dtype)?),
            DType::I32 => Storage::I32(filled(n, 0, dtype)?),
        })
    }
}

/// Checks that a constant's value fits `dtype` exactly where it must: integer dtypes take only
/// whole numbers in their range (a float dtype takes any value and rounds it).
pub fn check_constant_value(value: f64, dtype: DType) -> Result<()> {
    let (lo, hi) = match dtype {
        DType::U32 => (0.0, f64::from(u32::MAX)),
        DType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
        DType::F32 | DType::F16 | DType::BF16 => return Ok(()),
    };
    if value.fract() != 0.0 || !(lo..=hi).contains(&value) {
        return Err(Error::InvalidArgument {
            op: "constant",
            msg: format!("value {value} is not a {dtype} (whole numbers from {lo} to {hi})"),
        });
    }
    Ok(())
}

/// A `Constant` node's values as storage of `count` elements of `dtype`, exactly: one value is
/// splatted, otherwise there must be `count` values. Integers convert straight from f64 (a
/// non-integer or out-of-range value is an `Err`); f32 rounds f64 → f32 to nearest even; f16 and
/// bf16 round f64 → f32 → 16 bits, to nearest even each time. Every backend builds constants
/// with this one function, so they hold the same bits everywhere.
pub fn constant_storage(values: &[f64], dtype: DType, count: usize) -> Result<Storage> {
    if values.len() != 1 && values.len() != count {
        return Err(Error::DataLength {
            shape: format!("[{count}]"),
            expected: count,
            got: values.len(),
        });
    }
    for &v in values {
        check_constant_value(v, dtype)?;
    }
    fn each<T: Clone>(values: &[f64], count: usize, f: impl Fn(f64) -> T) -> Vec<T> {
        match values {
            [v] => vec![f(*v); count],
            _ => values.iter().map(|&v| f(v)).collect(),
        }
    }
    // The range checks above make these `as` conversions exact.
    Ok(match dtype {
        DType::U32 => Storage::U32(each(values, count, |v| v as u32)),
        DType::I32 => Storage::I32(each(values, count, |v| v as i32)),
        DType::F32 => Storage::F32(each(values, count, |v| v as f32)),
        DType::F16 | DType::BF16 => Storage::from_f32(dtype, each(values, count, |v| v as f32)),
    })
}

impl Storage {
    /// Converts f32 values to `dtype` with `rounding`; stochastic rounding draws from
    /// `rng::sr_keys(seed, stream, counter)` by logical flat index.
    pub fn from_f32_rounded(
        dtype: DType,
        src: Vec<f32>,
        rounding: crate::dtype::Rounding,
        seed: u64,
        counter: u64,
    ) -> Storage {
        match (rounding, dtype) {
            (crate::dtype::Rounding::Stochastic { stream }, DType::F16) => Storage::F16(
                dtype::narrow_f16_sr(&src, crate::rng::sr_keys(seed, stream, counter)),
            ),
            (crate::dtype::Rounding::Stochastic { stream }, DType::BF16) => Storage::BF16(
                dtype::narrow_bf16_sr(&src, crate::rng::sr_keys(seed, stream, counter)),
            ),
            _ => Storage::from_f32(dtype, src),
        }
    }
}

impl<'a> StorageRef<'a> {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            StorageRef::F32(_) => DType::F32,
            StorageRef::F16(_) => DType::F16,
            StorageRef::BF16(_) => DType::BF16,
            StorageRef::U32(_) => DType::U32,
            StorageRef::I32(_) => DType::I32,
        }
    }

    /// The element count.
    pub fn len(&self) -> usize {
        match self {
            StorageRef::F32(v) => v.len(),
            StorageRef::F16(v) => v.len(),
            StorageRef::BF16(v) => v.len(),
            StorageRef::U32(v) => v.len(),
            StorageRef::I32(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bytes (native endian).
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            StorageRef::F32(v) => bytemuck::cast_slice(v),
            StorageRef::F16(v) => bytemuck::cast_slice(v),
            StorageRef::BF16(v) => bytemuck::cast_slice(v),
            StorageRef::U32(v) => bytemuck::cast_slice(v),
            StorageRef::I32(v) => bytemuck::cast_slice(v),
        }
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Storage {
        match *self {
            StorageRef::F32(v) => Storage::F32(v.to_vec()),
            StorageRef::F16(v) => Storage::F16(v.to_vec()),
            StorageRef::BF16(v) => Storage::BF16(v.to_vec()),
            StorageRef::U32(v) => Storage::U32(v.to_vec()),
            StorageRef::I32(v) => Storage::I32(v.to_vec()),
        }
    }

    /// The values widened to f32 (exact for f16/bf16; integers convert as Rust `as` does).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match *self {
            StorageRef::F32(v) => v.to_vec(),
            StorageRef::F16(v) => dtype::widen_f16(v),
            StorageRef::BF16(v) => dtype::widen_bf16(v),
            StorageRef::U32(v) => v.iter().map(|&x| x as f32).collect(),
            StorageRef::I32(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values widened to f64 (exact for every dtype).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match *self {
            StorageRef::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            StorageRef::F16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            StorageRef::BF16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            StorageRef::U32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            StorageRef::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        }
    }
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let expected = shape.iter().fold(1usize, |a, &d| a.saturating_mul(d));
    if expected != len {
        return Err(Error::DataLength {
            shape: fmt_dims(shape),
            expected,
            got: len,
        });
    }
    Ok(())
}

/// An owned host tensor: concrete shape and typed data, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Storage,
}

impl Tensor {
    /// A tensor from typed data; `Err` when the length does not match the shape.
    pub fn new<T: Element>(shape: &[usize], data: Vec<T>) -> Result<Tensor> {
        Tensor::from_storage(shape, T::wrap_vec(data))
    }

    /// A tensor from typed storage; `Err` when the length does not match the shape.
    pub fn from_storage(shape: &[usize], data: Storage) -> Result<Tensor> {
        check_len(shape, data.len())?;
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// f32 values stored as `dtype` (rounded to nearest even for f16/bf16).
    pub fn from_f32(shape: &[usize], data: Vec<f32>, dtype: DType) -> Result<Tensor> {
        check_len(shape, data.len())?;
        Tensor::from_storage(shape, Storage::from_f32(dtype, data))
    }

    /// Zeros.
    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape: shape.to_vec(),
            data: Storage::zeros(dtype, n),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The element count.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The typed storage.
    pub fn storage(&self) -> &Storage {
        &self.data
    }

    /// The typed storage, to overwrite in place (the length must not change).
    pub(crate) fn storage_mut(&mut self) -> &mut Storage {
        &mut self.data
    }

    /// Consumes the tensor, returning its storage.
    pub fn into_storage(self) -> Storage {
        self.data
    }

    /// A borrowed view, to pass as a run input.
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            shape: &self.shape,
            data: self.data.as_ref(),
        }
    }

    /// The data as `T` when the dtype matches.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        let got = self.dtype();
        if got != T::DTYPE {
            return Err(Error::DTypeMismatch {
                op: "Tensor::as_slice",
                lhs: T::DTYPE,
                rhs: got,
            });
        }
        Ok(bytemuck::cast_slice(self.data.as_ref().as_bytes()))
    }

    /// The values widened to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.data.as_ref().to_f32_vec()
    }

    /// The values widened to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.data.as_ref().to_f64_vec()
    }

    /// The raw bytes (native endian).
    pub fn as_bytes(&self) -> &[u8] {
        self.data.as_ref().as_bytes()
    }
}

/// A borrowed host tensor. `Session::run` reads its inputs through views, so an input is never
/// copied on the way in when its dtype is the one the graph declares.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    shape: &'a [usize],
    data: StorageRef<'a>,
}

impl<'a> TensorView<'a> {
    /// A view of typed data; `Err` when the length does not match the shape.
    pub fn new<T: Element>(shape: &'a [usize], data: &'a [T]) -> Result<TensorView<'a>> {
        check_len(shape, data.len())?;
        Ok(TensorView {
            shape,
            data: T::wrap(data),
        })
    }

    /// The shape.
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The typed data.
    pub fn data(&self) -> StorageRef<'a> {
        self.data
    }

    /// An owned copy.
    pub fn to_tensor(&self) -> Tensor {
        Tensor {
            shape: self.shape.to_vec(),
            data: self.data.to_owned(),
        }
    }
}
