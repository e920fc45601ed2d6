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

/// `a · bᵀ` for `a` of shape `[.., m, p]` and `b` of shape `[.., n, p]`, both contiguous along
/// `p`: the product of two matrices that run along the summed axis, as weight gradients do.
///
/// The GEMM reads one operand along its rows as they lie and first copies the other into its
/// own blocked layout, transposing it (`b` in `a · bᵀ`, `a` in `b · aᵀ`). This takes the order
/// that copies the smaller operand and transposes the small `m × n` result where needed: for a
/// 3×3 convolution's weight gradient the columns (`9·c_in × p`) are far larger than the output
/// gradient (`c_out × p`), and copying them was as slow as the product itself. Which order is
/// taken depends only on the shapes, so the results do not depend on the thread count.
pub(crate) fn matmul_nt(a: FlexTensor, b: FlexTensor) -> FlexTensor {
    let rank = a.layout().shape().num_dims();
    let (m, n) = (a.layout().shape()[rank - 2], b.layout().shape()[rank - 2]);
    if n <= m {
        return Flex::float_matmul(a, Flex::float_swap_dims(b, rank - 2, rank - 1));
    }
    let product = Flex::float_matmul(b, Flex::float_swap_dims(a, rank - 2, rank - 1));
    Flex::float_swap_dims(product, rank - 2, rank - 1).to_contiguous()
}
