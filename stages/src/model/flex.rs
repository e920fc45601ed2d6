//! Reading and building flex tensors for the fused CPU kernels: f32, contiguous, and where
//! possible overwritten in place.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType, TensorData};

/// `t` as a contiguous f32 tensor (no copy when it already is one).
pub(crate) fn f32_tensor(t: FlexTensor) -> FlexTensor {
    let t = if t.dtype() == DType::F32 {
        t
    } else {
        Flex::float_cast(t, FloatDType::F32)
    };
    if t.is_contiguous() {
        return t;
    }
    t.to_contiguous()
}

/// Whether `t`'s buffer holds exactly its elements, from offset 0, and is not shared: then it
/// can be overwritten in place.
pub(crate) fn is_exclusive(t: &FlexTensor) -> bool {
    t.is_unique()
        && t.is_contiguous()
        && t.layout().start_offset() == 0
        && t.bytes().len() == t.layout().num_elements() * 4
}

/// `t` as an f32 tensor that [`is_exclusive`] (copied only when it is shared or a view).
pub(crate) fn owned_f32(t: FlexTensor) -> FlexTensor {
    let t = f32_tensor(t);
    if is_exclusive(&t) {
        t
    } else {
        FlexTensor::from_data(t.into_data())
    }
}

/// The shape of a 4-D tensor, `None` for any other rank.
pub(crate) fn dims4(t: &FlexTensor) -> Option<[usize; 4]> {
    t.layout().shape().as_slice().try_into().ok()
}

/// The elements of a contiguous f32 tensor.
pub(crate) fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// A tensor of `shape` from f32 values, cast to `dtype`.
pub(crate) fn from_f32(data: Vec<f32>, shape: &[usize], dtype: DType) -> FlexTensor {
    cast(
        FlexTensor::from_data(TensorData::new(data, shape.to_vec())),
        dtype,
    )
}

/// `t` (f32) cast to `dtype`.
pub(crate) fn cast(t: FlexTensor, dtype: DType) -> FlexTensor {
    match dtype {
        DType::F32 => t,
        other => Flex::float_cast(t, other.into()),
    }
}

/// `n` zeros, written by all threads when `n` is large: a zero-filled output allocated on the
/// calling thread is otherwise a serial memset that leaves the other cores idle.
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    if n < 1 << 16 {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0.0f32, n));
    v
}
