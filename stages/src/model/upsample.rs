//! A decoder block's input: the deeper feature upsampled (nearest) to the skip's size and
//! concatenated with the skip along the channels, as one CPU kernel forward and backward.
//!
//! Burn computes it as an interpolation, which writes the upsampled tensor, then a concatenation
//! that copies it and the skip again, on one thread; backward, the concatenation's gradient is
//! sliced and the interpolation's gradient scattered. Here each output plane is written once, by
//! all threads, and backward each input plane's gradient is gathered in one pass. Used on flex
//! only; [`upsample_cat`] sends every other device to Burn's operations.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use super::conv::on_flex;
use super::flex::{f32_tensor, f32s, zeros};

/// Upsample-and-concatenate as backend operations.
#[backend_extension(Flex, Autodiff)]
pub trait UpsampleBackend: Backend {
    /// `cat([nearest(x, size), skip], 1)` for `x` `[n, c1, h, w]` and `skip` `[n, c2, size]`.
    fn upsample_cat(
        x: FloatTensor<Self>,
        skip: FloatTensor<Self>,
        size: [usize; 2],
    ) -> FloatTensor<Self>;

    /// The gradients of [`UpsampleBackend::upsample_cat`] with respect to `x` (of shape
    /// `x_dims`) and `skip`, from the output's gradient.
    fn upsample_cat_backward(
        grad: FloatTensor<Self>,
        x_dims: [usize; 4],
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// `cat([interpolate_nearest(x, size), skip], 1)`, fused on flex. The same result as Burn's
/// `interpolate` (nearest: source index `⌊o · in / out⌋`) followed by `Tensor::cat`.
pub fn upsample_cat(x: Tensor<4>, skip: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    if !fuses(&x, &skip, size) {
        let up = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
        );
        return Tensor::cat(vec![up, skip], 1);
    }
    Tensor::from_dispatch(<Dispatch as UpsampleBackend>::upsample_cat(
        x.into_dispatch(),
        skip.into_dispatch(),
        size,
    ))
}

/// Whether [`upsample_cat`] takes the fused kernel for these inputs.
fn fuses(x: &Tensor<4>, skip: &Tensor<4>, size: [usize; 2]) -> bool {
    let [n, _, h, w] = x.dims();
    let [sn, _, sh, sw] = skip.dims();
    on_flex(&x.device())
        && x.dtype() == DType::F32
        && skip.dtype() == DType::F32
        && n == sn
        && [sh, sw] == size
        && h > 0
        && w > 0
}

/// `map[o]`: the input index nearest-neighbour upsampling reads for output index `o`, as Burn
/// computes it (`⌊o · in / out⌋` in f64, clamped).
fn nearest_map(input: usize, output: usize) -> Vec<usize> {
    let ratio = input as f64 / output as f64;
    (0..output)
        .map(|o| ((o as f64 * ratio).floor() as usize).min(input - 1))
        .collect()
}

fn dims(t: &FlexTensor) -> [usize; 4] {
    t.layout()
        .shape()
        .as_slice()
        .try_into()
        .expect("a 4-D tensor")
}

impl UpsampleBackend for Flex {
    fn upsample_cat(x: FlexTensor, skip: FlexTensor, size: [usize; 2]) -> FlexTensor {
        let (x, skip) = (f32_tensor(x), f32_tensor(skip));
        let ([n, c1, h, w], [_, c2, _, _]) = (dims(&x), dims(&skip));
        let [oh, ow] = size;
        let (rows, cols) = (nearest_map(h, oh), nearest_map(w, ow));
        let (xs, ss) = (f32s(&x), f32s(&skip));
        let plane = oh * ow;
        let mut out = zeros(n * (c1 + c2) * plane);
        out.par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(p, dst)| {
                let (b, c) = (p / (c1 + c2), p % (c1 + c2));
                if c < c1 {
                    let src = &xs[(b * c1 + c) * h * w..][..h * w];
                    for (dst_row, &r) in dst.chunks_mut(ow).zip(&rows) {
                        let src_row = &src[r * w..][..w];
                        for (d, &k) in dst_row.iter_mut().zip(&cols) {
                            *d = src_row[k];
                        }
                    }
                } else {
                    dst.copy_from_slice(&ss[(b * c2 + c - c1) * plane..][..plane]);
                }
            });
        FlexTensor::from_data(TensorData::new(out, [n, c1 + c2, oh, ow]))
    }

    fn upsample_cat_backward(grad: FlexTensor, x_dims: [usize; 4]) -> (FlexTensor, FlexTensor) {
        let grad = f32_tensor(grad);
        let [n, c, oh, ow] = dims(&grad);
        let [_, c1, h, w] = x_dims;
        let c2 = c - c1;
        let (rows, cols) = (nearest_map(h, oh), nearest_map(w, ow));
        let g = f32s(&grad);
        let plane = oh * ow;
        // Each input pixel's gradient sums the output pixels that read it, in output order.
        let mut dx = zeros(n * c1 * h * w);
        dx.par_chunks_mut((h * w).max(1))
            .enumerate()
            .for_each(|(p, dst)| {
                let (b, ch) = (p / c1, p % c1);
                let src = &g[(b * c + ch) * plane..][..plane];
                for (src_row, &r) in src.chunks(ow).zip(&rows) {
                    let dst_row = &mut dst[r * w..][..w];
                    for (&v, &k) in src_row.iter().zip(&cols) {
                        dst_row[k] += v;
                    }
                }
            });
        let mut dskip = zeros(n * c2 * plane);
        dskip
            .par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(p, dst)| {
                let (b, ch) = (p / c2.max(1), p % c2.max(1));
                dst.copy_from_slice(&g[(b * c + c1 + ch) * plane..][..plane]);
            });
        (
            FlexTensor::from_data(TensorData::new(dx, x_dims)),
            FlexTensor::from_data(TensorData::new(dskip, [n, c2, oh, ow])),
        )
    }
}

impl<B: Backend + UpsampleBackend, C: CheckpointStrategy> UpsampleBackend for Autodiff<B, C> {
    fn upsample_cat(
        x: FloatTensor<Self>,
        skip: FloatTensor<Self>,
        size: [usize; 2],
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct UpsampleCat;

        impl<B: Backend + UpsampleBackend> Backward<B, 2> for UpsampleCat {
            type State = [usize; 4];

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_skip] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (dx, dskip) = B::upsample_cat_backward(grad, ops.state);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, dx);
                }
                if let Some(node) = node_skip {
                    grads.register::<B>(node.id, dskip);
                }
            }
        }

        let x_dims: [usize; 4] = x
            .primitive()
            .shape()
            .as_slice()
            .try_into()
            .expect("a 4-D tensor");
        match UpsampleCat
            .prepare::<C>([x.node(), skip.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                x_dims,
                B::upsample_cat(x.into_primitive(), skip.into_primitive(), size),
            ),
            OpsKind::UnTracked(prep) => prep.finish(B::upsample_cat(
                x.into_primitive(),
                skip.into_primitive(),
                size,
            )),
        }
    }

    /// Computed by the inner backend: the gradients are constants to autodiff.
    fn upsample_cat_backward(
        grad: FloatTensor<Self>,
        x_dims: [usize; 4],
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dskip) = B::upsample_cat_backward(Self::inner(grad), x_dims);
        (Self::from_inner(dx), Self::from_inner(dskip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn values(t: &Tensor<4>) -> Vec<f32> {
        t.to_data().iter().collect()
    }

    /// Output and both gradients against Burn's interpolation and concatenation: doubling, an
    /// odd target size (SMP's size-driven upsampling) and a one-pixel input.
    #[test]
    fn matches_burns_interpolate_and_cat() {
        for (n, c1, c2, [h, w], size) in [
            (2, 3, 2, [4, 5], [8, 10]),
            (1, 2, 3, [3, 3], [7, 5]),
            (2, 1, 1, [1, 1], [2, 2]),
        ] {
            let device = Device::flex().autodiff();
            device.seed(9);
            let x = Tensor::<4>::random([n, c1, h, w], Distribution::Normal(0.0, 1.0), &device);
            let skip = Tensor::<4>::random(
                [n, c2, size[0], size[1]],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let up = Tensor::<4>::random(
                [n, c1 + c2, size[0], size[1]],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            assert!(
                fuses(&x, &skip, size),
                "the kernel, not Burn's ops, is under test"
            );
            let run = |ours: bool| {
                let (x, skip) = (x.clone().require_grad(), skip.clone().require_grad());
                let y = if ours {
                    upsample_cat(x.clone(), skip.clone(), size)
                } else {
                    let u = interpolate(
                        x.clone(),
                        InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
                    );
                    Tensor::cat(vec![u, skip.clone()], 1)
                };
                let grads = (y.clone() * up.clone()).sum().backward();
                [
                    values(&y),
                    values(&x.grad(&grads).expect("x grad")),
                    values(&skip.grad(&grads).expect("skip grad")),
                ]
            };
            let (theirs, ours) = (run(false), run(true));
            for (name, (a, b)) in ["output", "x grad", "skip grad"]
                .iter()
                .zip(ours.iter().zip(&theirs))
            {
                let worst = a
                    .iter()
                    .zip(b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst < 1e-5,
                    "{name} differs by {worst} ({h}×{w} → {size:?})"
                );
            }
        }
    }
}
