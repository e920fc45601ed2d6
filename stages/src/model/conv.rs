//! Convolutions whose gradients Burn's CPU backend (flex) computes slowly, with a backward pass
//! of their own.
//!
//! Burn derives a convolution's weight gradient from another convolution, in which the batch
//! plays the input channels and the output gradient a kernel as large as the feature map. On
//! flex, with a batch of at most 4 and at most 16 output channels (the U-Net's last decoder
//! block, the head, most 1×1 projections), and for every depthwise convolution (one such
//! convolution per channel), that lands in a direct loop built for small kernels: about 40 % of
//! an EfficientNet U-Net's training step went there. Here the weight gradient is computed as
//! what it is, a sum over kernel taps of (output gradient) × (shifted input)ᵀ matrix products,
//! and a depthwise convolution's two gradients by direct loops over (batch, channel) planes.
//! Every reduction runs in a fixed order, so results do not depend on the number of threads.
//!
//! Dense k×k convolutions (forward, weight gradient, and the input gradient at stride 1) go
//! through [`super::dense`], depthwise ones (forward and both gradients) through
//! [`super::depthwise`].
//!
//! This is a Burn backend extension with its own autodiff step. Only flex (and autodiff over
//! flex) has it; [`conv2d`] sends every other device to Burn's `conv2d`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Slice;
use burn::tensor::{Device, Tensor};

use super::flex::{dims4, matmul_nt};
use super::{dense, depthwise};

/// A bias-free 2-D convolution as a backend operation with separately overridable gradients.
#[backend_extension(Flex, Autodiff)]
pub trait ConvBackend: Backend {
    /// `conv2d` without bias.
    fn custom_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// The gradient with respect to the input.
    fn custom_conv2d_x_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, grad, options)
    }

    /// The gradient with respect to the weight.
    fn custom_conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, grad, options)
    }
}

impl ConvBackend for Flex {
    fn custom_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        if let Some(y) = dense::conv2d(&x, &weight, &options) {
            return y;
        }
        if let Some(y) = depthwise::conv2d(&x, &weight, &options) {
            return y;
        }
        Flex::conv2d(x, weight, None, options)
    }

    fn custom_conv2d_x_grad(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        if let Some(dx) = pointwise_x_grad(&x, &weight, &grad, &options) {
            return dx;
        }
        if let Some(dx) = dense::x_grad(&x, &weight, &grad, &options) {
            return dx;
        }
        if let Some(dx) = depthwise::x_grad(&x, &weight, &grad, &options) {
            return dx;
        }
        Flex::conv2d_x_backward(x, weight, grad, options)
    }

    fn custom_conv2d_weight_grad(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        if let Some(dw) = depthwise::weight_grad(&x, &weight, &grad, &options) {
            return dw;
        }
        if let Some(dw) = dense::weight_grad(&x, &weight, &grad, &options) {
            return dw;
        }
        if options.groups == 1 {
            let shape = weight.layout().shape().clone();
            return dense_weight_grad(x, grad, shape, &options);
        }
        Flex::conv2d_weight_backward(x, weight, grad, options)
    }
}

impl<B: Backend + ConvBackend, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
    fn custom_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ConvBackward;

        impl<B: Backend + ConvBackend> Backward<B, 2> for ConvBackward {
            type State = (NodeId, NodeId, ConvOptions<2>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_weight] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, weight_state, options) = ops.state;
                let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
                let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight_state);
                if let Some(node) = node_x {
                    let dx = B::custom_conv2d_x_grad(
                        x.clone(),
                        weight.clone(),
                        grad.clone(),
                        options.clone(),
                    );
                    grads.register::<B>(node.id, dx);
                }
                if let Some(node) = node_weight {
                    let dw = B::custom_conv2d_weight_grad(x, weight, grad, options);
                    grads.register::<B>(node.id, dw);
                }
            }
        }

        match ConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let out =
                    B::custom_conv2d(x.into_primitive(), weight.into_primitive(), options.clone());
                prep.finish((x_state, weight_state, options), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::custom_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                options,
            )),
        }
    }
}

/// Whether `device` computes on flex, directly or under autodiff.
pub(super) fn on_flex(device: &Device) -> bool {
    fn flex(device: &DispatchDevice) -> bool {
        match device {
            DispatchDevice::Flex(_) => true,
            DispatchDevice::Autodiff(inner) => flex(&inner.clone().inner()),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
    flex(device.as_dispatch())
}

/// `conv2d(x, weight, bias, options)`, with the gradients of this module on flex and Burn's
/// own everywhere else. Same result as [`burn::tensor::module::conv2d`].
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    if !on_flex(&x.device()) {
        return burn::tensor::module::conv2d(x, weight, bias, options);
    }
    let y = Tensor::from_dispatch(<Dispatch as ConvBackend>::custom_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ));
    match bias {
        Some(bias) => {
            let channels = bias.dims()[0];
            y + bias.reshape([1, channels, 1, 1])
        }
        None => y,
    }
}

/// A `Conv2d` module's forward pass through [`conv2d`]: the same padding rules, including TF
/// `SAME`'s odd pixel after.
pub fn conv2d_module(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [_, _, height, width] = x.dims();
    let options = ConvOptions::new_with_padding(
        conv.stride,
        [
            padding_pair(
                &conv.padding,
                conv.kernel_size[0],
                conv.stride[0],
                height,
                0,
            ),
            padding_pair(&conv.padding, conv.kernel_size[1], conv.stride[1], width, 1),
        ],
        conv.dilation,
        conv.groups,
    );
    conv2d(
        x,
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        options,
    )
}

/// The (begin, end) padding of one axis (0 rows, 1 columns), as `Conv2d::forward` computes it.
fn padding_pair(
    padding: &PaddingConfig2d,
    kernel: usize,
    stride: usize,
    size: usize,
    axis: usize,
) -> (usize, usize) {
    match *padding {
        PaddingConfig2d::Valid => (0, 0),
        PaddingConfig2d::Same => {
            let out = size.div_ceil(stride);
            let total = if out > 0 {
                ((out - 1) * stride + kernel).saturating_sub(size)
            } else {
                0
            };
            (total / 2, total - total / 2)
        }
        PaddingConfig2d::Explicit(top, left, bottom, right) => {
            if axis == 0 {
                (top, bottom)
            } else {
                (left, right)
            }
        }
    }
}

/// The input gradient of a dense 1×1, stride-1, unpadded convolution, `dx[n] = Wᵀ · dy[n]`, as
/// one batched matrix product. Burn's generic path treats it as a transposed convolution: the
/// same product into a column buffer, then an element-by-element scatter of that buffer into
/// the output. `None` for any other convolution.
fn pointwise_x_grad(
    x: &FlexTensor,
    weight: &FlexTensor,
    grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let ([b, c_in, h, w], [c_out, per_group, kh, kw], [gb, gc, oh, ow]) =
        (dims4(x)?, dims4(weight)?, dims4(grad)?);
    let pointwise = options.groups == 1
        && (kh, kw, per_group) == (1, 1, c_in)
        && options.stride == [1, 1]
        && options.padding == [(0, 0), (0, 0)]
        && (gb, gc, oh, ow) == (b, c_out, h, w);
    if !pointwise {
        return None;
    }
    let w_t = Flex::float_swap_dims(
        Flex::float_reshape(weight.clone(), [1, c_out, c_in].into()),
        1,
        2,
    );
    let g = Flex::float_reshape(grad.clone(), [b, c_out, h * w].into());
    let dx = Flex::float_matmul(w_t, g);
    Some(Flex::float_reshape(dx, [b, c_in, h, w].into()))
}

/// The weight gradient of a dense (`groups == 1`) convolution that [`dense`] does not take (1×1
/// kernels, whose tap is the input itself): for each kernel tap, the batch's
/// output gradient `(b, c_out, oh·ow)` times the input seen through that tap `(b, oh·ow, c_in)`,
/// summed over the batch.
fn dense_weight_grad(
    x: FlexTensor,
    grad: FlexTensor,
    weight_shape: burn::tensor::Shape,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let [b, c_in, h, w] = x.layout().shape().dims::<4>();
    let [_, c_out, oh, ow] = grad.layout().shape().dims::<4>();
    let [_, _, kh, kw] = weight_shape.dims::<4>();
    let [(top, bottom), (left, right)] = options.padding;
    let dtype = x.dtype();
    let padded = if top + bottom + left + right > 0 {
        let zeros = Flex::float_zeros(
            [b, c_in, h + top + bottom, w + left + right].into(),
            &Default::default(),
            dtype.into(),
        );
        Flex::float_slice_assign(
            zeros,
            &[
                Slice::from(..),
                Slice::from(..),
                Slice::from(top..top + h),
                Slice::from(left..left + w),
            ],
            x,
        )
    } else {
        x
    };
    let grad = Flex::float_reshape(grad, [b, c_out, oh * ow].into());
    let [sh, sw] = options.stride;
    let [dh, dw] = options.dilation;
    let mut taps = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            let (r, c) = (i * dh, j * dw);
            let seen = Flex::float_slice(
                padded.clone(),
                &[
                    Slice::from(..),
                    Slice::from(..),
                    Slice::new(
                        r as isize,
                        Some((r + sh * (oh - 1) + 1) as isize),
                        sh as isize,
                    ),
                    Slice::new(
                        c as isize,
                        Some((c + sw * (ow - 1) + 1) as isize),
                        sw as isize,
                    ),
                ],
            );
            let seen = Flex::float_reshape(seen, [b, c_in, oh * ow].into());
            let product = matmul_nt(grad.clone(), seen);
            let summed = Flex::float_sum_dim(product, 0);
            taps.push(Flex::float_reshape(summed, [c_out, c_in, 1].into()));
        }
    }
    Flex::float_reshape(Flex::float_cat(taps, 2), weight_shape)
}

/// The output length of a convolution axis of `size` with `(begin, end)` padding, kernel `k`,
/// stride `s` and dilation `d`; `None` when the kernel does not fit.
pub(super) fn output_size(
    size: usize,
    (begin, end): (usize, usize),
    k: usize,
    s: usize,
    d: usize,
) -> Option<usize> {
    (size + begin + end)
        .checked_sub(d * (k - 1) + 1)
        .map(|v| v / s + 1)
}

/// The outputs `o` (of `out_len`) whose input index `o·stride + offset` lies in `0..len`: where a
/// kernel tap at that offset sees the input rather than padding.
pub(super) fn valid_outputs(
    offset: isize,
    stride: usize,
    len: usize,
    out_len: usize,
) -> std::ops::Range<usize> {
    let s = stride as isize;
    let lo = if offset < 0 { (-offset + s - 1) / s } else { 0 };
    let hi = (len as isize - offset + s - 1)
        .div_euclid(s)
        .clamp(0, out_len as isize);
    (lo as usize).min(hi as usize)..hi as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Output, input and weight gradients against Burn's generic convolution, for the kernels,
    /// strides and (asymmetric, TF `SAME`) paddings EfficientNet and the U-Net use: depthwise
    /// (groups = channels, including rows wider than 64), dense (groups = 1, including 1×1 and a
    /// strided tap grid, with the weight gradient's product taken in both orders) and, through
    /// Burn's fallback, a grouped convolution that is neither.
    #[test]
    fn gradients_match_burns_generic_convolution() {
        // (kernel, stride, padding, size, in channels, out channels, groups)
        let cases = [
            (3, [1, 1], [(1, 1), (1, 1)], 9, 5, 5, 5),
            (3, [2, 2], [(0, 1), (0, 1)], 10, 5, 5, 5),
            (5, [1, 1], [(2, 2), (2, 2)], 7, 5, 5, 5),
            (5, [2, 2], [(1, 2), (1, 2)], 11, 5, 5, 5),
            (3, [2, 2], [(1, 1), (1, 1)], 8, 5, 5, 5),
            // Wide rows, whose loops run over many vector widths and end in a remainder.
            (3, [1, 1], [(1, 1), (1, 1)], 70, 3, 3, 3),
            (5, [1, 1], [(2, 2), (2, 2)], 133, 2, 2, 2),
            (3, [2, 2], [(0, 1), (0, 1)], 70, 2, 2, 2),
            (3, [1, 1], [(1, 1), (1, 1)], 9, 3, 4, 1),
            (3, [2, 2], [(0, 1), (0, 1)], 10, 3, 6, 1),
            (1, [1, 1], [(0, 0), (0, 0)], 6, 7, 2, 1),
            (1, [1, 1], [(0, 0), (0, 0)], 6, 2, 7, 1),
            (3, [1, 1], [(1, 1), (1, 1)], 6, 1, 12, 1),
            (3, [1, 1], [(0, 0), (0, 0)], 8, 2, 3, 1),
            (3, [1, 1], [(0, 1), (1, 0)], 7, 3, 5, 1),
            (5, [1, 1], [(2, 2), (2, 2)], 6, 2, 3, 1),
            (3, [1, 1], [(1, 1), (1, 1)], 6, 4, 6, 2),
        ];
        for (k, stride, padding, size, c_in, c_out, groups) in cases {
            let device = Device::flex().autodiff();
            device.seed(7);
            let b = 2;
            let options = ConvOptions::new_with_padding(stride, padding, [1, 1], groups);
            let x = Tensor::<4>::random(
                [b, c_in, size, size],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let w = Tensor::<4>::random(
                [c_out, c_in / groups, k, k],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let bias = Tensor::<1>::random([c_out], Distribution::Normal(0.0, 1.0), &device);
            let dims =
                burn::tensor::module::conv2d(x.clone(), w.clone(), None, options.clone()).dims();
            // A non-uniform upstream gradient, the same for both.
            let up = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                let (x, w, bias) = (
                    x.clone().require_grad(),
                    w.clone().require_grad(),
                    bias.clone().require_grad(),
                );
                let y = if ours {
                    conv2d(x.clone(), w.clone(), Some(bias.clone()), options.clone())
                } else {
                    burn::tensor::module::conv2d(
                        x.clone(),
                        w.clone(),
                        Some(bias.clone()),
                        options.clone(),
                    )
                };
                let grads = (y.clone() * up.clone()).sum().backward();
                [
                    y.into_data(),
                    x.grad(&grads).expect("x grad").into_data(),
                    w.grad(&grads).expect("w grad").into_data(),
                    bias.grad(&grads).expect("bias grad").into_data(),
                ]
            };
            // The fast paths take these cases (else this would compare Burn with itself).
            let flex = |t: &Tensor<4>| FlexTensor::from_data(t.to_data());
            let (xf, wf, gf) = (flex(&x), flex(&w), flex(&up));
            if groups == 1 && k > 1 {
                assert!(dense::conv2d(&xf, &wf, &options).is_some());
                assert!(dense::weight_grad(&xf, &wf, &gf, &options).is_some());
                assert_eq!(
                    dense::x_grad(&xf, &wf, &gf, &options).is_some(),
                    stride == [1, 1]
                );
            }
            if groups == c_in && c_out == c_in {
                assert!(depthwise::conv2d(&xf, &wf, &options).is_some());
                assert!(depthwise::x_grad(&xf, &wf, &gf, &options).is_some());
                assert!(depthwise::weight_grad(&xf, &wf, &gf, &options).is_some());
            }
            let (theirs, ours) = (run(false), run(true));
            for (name, (a, b)) in ["output", "x grad", "w grad", "bias grad"]
                .iter()
                .zip(ours.iter().zip(&theirs))
            {
                let (a, b): (Vec<f32>, Vec<f32>) = (a.iter().collect(), b.iter().collect());
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max);
                // Relative to the largest value: the weight gradients of the wide cases sum
                // ten thousand products.
                let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                assert!(
                    worst < 1e-4 * scale,
                    "{name} differs by {worst} (kernel {k}, stride {stride:?}, groups {groups})"
                );
            }
        }
    }

    /// Dense (several bands and partial sums) and depthwise convolutions give bit-identical
    /// outputs and gradients with 1 and 3 threads.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let x = Tensor::<4>::random([3, 8, 37, 41], Distribution::Normal(0.0, 1.0), &device);
        let dense = Tensor::<4>::random([12, 8, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let depthwise = Tensor::<4>::random([8, 1, 5, 5], Distribution::Normal(0.0, 1.0), &device);
        let run = || {
            let (x, dense, depthwise) = (
                x.clone().require_grad(),
                dense.clone().require_grad(),
                depthwise.clone().require_grad(),
            );
            let same = ConvOptions::new_with_padding([1, 1], [(1, 1), (1, 1)], [1, 1], 1);
            let strided = ConvOptions::new_with_padding([2, 2], [(1, 2), (1, 2)], [1, 1], 8);
            let a = conv2d(x.clone(), dense.clone(), None, same);
            let b = conv2d(x.clone(), depthwise.clone(), None, strided);
            let grads = ((a.clone() * a.clone()).sum() + (b.clone() * b.clone()).sum()).backward();
            let values = |t: Tensor<4>| -> Vec<f32> { t.to_data().iter().collect() };
            [
                values(a),
                values(b),
                values(x.grad(&grads).expect("x grad")),
                values(dense.grad(&grads).expect("dense grad")),
                values(depthwise.grad(&grads).expect("depthwise grad")),
            ]
        };
        let pool = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool")
        };
        assert_eq!(pool(1).install(run), pool(3).install(run));
    }
}
