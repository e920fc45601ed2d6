//! Squeeze-excitation's gate `x · sigmoid(g)`, with `g` one value per (sample, channel), as one
//! CPU kernel forward and backward.
//!
//! Burn computes it as a sigmoid, a broadcast multiply and, backward, a broadcast multiply, a
//! full-size product summed over each plane and the sigmoid's gradient: five passes over the
//! activation, on one thread. Here the forward pass is one (in place when the input is not
//! needed again) and the backward pass one, which also sums `Σ dy·x` per plane. Used on flex
//! only; [`gate`] sends every other device to Burn's operations.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Tensor, activation};
use rayon::prelude::*;

use super::activation::sigmoid;
use super::conv::on_flex;
use super::flex::{cast, f32_tensor, f32s, from_f32, is_exclusive, owned_f32, zeros};
use super::simd;

/// The gate as backend operations.
#[backend_extension(Flex, Autodiff)]
pub trait GateBackend: Backend {
    /// `x · sigmoid(g)` for `x` of shape `[n, c, …]` and `g` of shape `[n, c, 1, …]`.
    fn gate(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradients of [`GateBackend::gate`] with respect to `x` and `g`.
    fn gate_backward(
        x: FloatTensor<Self>,
        g: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// `x * sigmoid(g)` for `x` `[n, c, h, w]` and `g` `[n, c, 1, 1]`, fused on flex.
pub fn gate(x: Tensor<4>, g: Tensor<4>) -> Tensor<4> {
    let [n, c, _, _] = x.dims();
    let fused = on_flex(&x.device())
        && x.dtype() == DType::F32
        && g.dtype() == DType::F32
        && g.dims() == [n, c, 1, 1];
    if !fused {
        return x * activation::sigmoid(g);
    }
    Tensor::from_dispatch(<Dispatch as GateBackend>::gate(
        x.into_dispatch(),
        g.into_dispatch(),
    ))
}

impl GateBackend for Flex {
    fn gate(x: FlexTensor, g: FlexTensor) -> FlexTensor {
        let dtype = x.dtype();
        let shape = x.layout().shape().clone();
        let g = f32_tensor(g);
        let gates: Vec<f32> = f32s(&g).iter().map(|&v| sigmoid(v)).collect();
        let plane = shape.iter().skip(2).product::<usize>().max(1);
        let x = f32_tensor(x);
        if is_exclusive(&x) {
            let mut y = x;
            y.storage_mut::<f32>()
                .par_chunks_mut(plane)
                .zip(&gates)
                .for_each(|(p, &s)| {
                    simd::dispatch(
                        #[inline(always)]
                        || simd::scale_in_place(p, s),
                    )
                });
            return cast(y, dtype);
        }
        let mut y = zeros(shape.num_elements());
        y.par_chunks_mut(plane)
            .zip(f32s(&x).par_chunks(plane))
            .zip(&gates)
            .for_each(|((dst, src), &s)| {
                simd::dispatch(
                    #[inline(always)]
                    || simd::scale(src, dst, s),
                )
            });
        from_f32(y, shape.as_slice(), dtype)
    }

    fn gate_backward(x: FlexTensor, g: FlexTensor, grad: FlexTensor) -> (FlexTensor, FlexTensor) {
        let (x_dtype, g_dtype) = (x.dtype(), g.dtype());
        let g_shape = g.layout().shape().clone();
        let plane = x.layout().shape().iter().skip(2).product::<usize>().max(1);
        let (x, g) = (f32_tensor(x), f32_tensor(g));
        let mut dx = owned_f32(grad);
        let dg: Vec<f32> = dx
            .storage_mut::<f32>()
            .par_chunks_mut(plane)
            .zip(f32s(&x).par_chunks(plane))
            .zip(f32s(&g))
            .map(|((d, src), &logit)| {
                let s = sigmoid(logit);
                let dot = simd::dispatch(
                    #[inline(always)]
                    || simd::scale_grad(src, d, s),
                );
                (dot * f64::from(s) * f64::from(1.0 - s)) as f32
            })
            .collect();
        (cast(dx, x_dtype), from_f32(dg, g_shape.as_slice(), g_dtype))
    }
}

impl<B: Backend + GateBackend, C: CheckpointStrategy> GateBackend for Autodiff<B, C> {
    fn gate(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GateOp;

        impl<B: Backend + GateBackend> Backward<B, 2> for GateOp {
            type State = (NodeId, NodeId);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_g] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, g_state) = ops.state;
                let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
                let g = checkpointer.retrieve_node_output::<FloatTensor<B>>(g_state);
                let (dx, dg) = B::gate_backward(x, g, grad);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, dx);
                }
                if let Some(node) = node_g {
                    grads.register::<B>(node.id, dg);
                }
            }
        }

        match GateOp
            .prepare::<C>([x.node(), g.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let g_state = prep.checkpoint(&g);
                let y = B::gate(x.into_primitive(), g.into_primitive());
                prep.finish((x_state, g_state), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::gate(x.into_primitive(), g.into_primitive()))
            }
        }
    }

    /// Computed by the inner backend: the gradients are constants to autodiff (no second order).
    fn gate_backward(
        x: FloatTensor<Self>,
        g: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dg) = B::gate_backward(Self::inner(x), Self::inner(g), Self::inner(grad));
        (Self::from_inner(dx), Self::from_inner(dg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
        t.to_data().iter().collect()
    }

    fn worst(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn matches_burns_sigmoid_gate_in_value_and_gradients() {
        for (n, c, h, w) in [(2, 3, 5, 7), (1, 4, 1, 1), (3, 2, 16, 17)] {
            let device = Device::flex().autodiff();
            device.seed(5);
            let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 2.0), &device);
            let g = Tensor::<4>::random([n, c, 1, 1], Distribution::Normal(0.0, 3.0), &device);
            let up = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                let (x, g) = (x.clone().require_grad(), g.clone().require_grad());
                let y = if ours {
                    gate(x.clone(), g.clone())
                } else {
                    x.clone() * activation::sigmoid(g.clone())
                };
                let grads = (y.clone() * up.clone()).sum().backward();
                [
                    values(&y),
                    values(&x.grad(&grads).expect("x grad")),
                    values(&g.grad(&grads).expect("g grad")),
                ]
            };
            let (theirs, ours) = (run(false), run(true));
            for (name, (a, b)) in ["output", "x grad", "g grad"]
                .iter()
                .zip(ours.iter().zip(&theirs))
            {
                assert!(
                    worst(a, b) < 1e-4,
                    "{name} on {n}x{c}x{h}x{w}: {}",
                    worst(a, b)
                );
            }
            // Without autodiff, the in-place path.
            let plain = Device::flex();
            let xp = Tensor::<4>::from_data(x.to_data(), &plain);
            let gp = Tensor::<4>::from_data(g.to_data(), &plain);
            let expected = values(&(xp.clone() * activation::sigmoid(gp.clone())));
            assert!(worst(&values(&gate(xp, gp)), &expected) < 1e-6);
        }
    }
}
