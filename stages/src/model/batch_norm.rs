//! BatchNorm and the activation after it as one CPU kernel, forward and backward.
//!
//! Burn composes BatchNorm from generic tensor operations: in training, a mean and a variance of a
//! transposed copy, then four broadcast passes, and about twelve more operations and two more
//! copies in the backward pass; the activation after it is another one or two passes each way.
//! On flex most of those run on one thread. Here one task per channel reads that channel's planes
//! (contiguous in NCHW, so nothing is copied) for its sums and writes `f(γ·x̂ + β)` in the same
//! task; the backward pass recomputes the activation's input from the saved statistics, so the
//! graph keeps only the convolution's output. Sums are accumulated in f64 in a fixed order, so
//! the result does not depend on the number of threads.
//!
//! Like [`super::conv`], this is a Burn backend extension with its own autodiff step, used on
//! flex only; [`batch_norm_act`] sends every other device to Burn's `BatchNorm` and activation.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
use burn::nn::BatchNorm;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::activation::Activation;
use super::conv::on_flex;
use super::flex::{cast, f32_tensor, f32s, from_f32, owned_f32, zeros};
use super::simd;

/// BatchNorm followed by an activation, as backend operations.
#[backend_extension(Flex, Autodiff)]
pub trait NormBackend: Backend {
    /// Training mode: normalises with the batch's own statistics and returns
    /// `(f(γ·x̂ + β), mean, biased variance)`; the statistics are per channel (axis 1).
    fn batch_norm_act_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        activation: Activation,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of [`NormBackend::batch_norm_act_train`] with respect to `x`, `gamma` and
    /// `beta`, given its output's gradient and the statistics it returned.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_act_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        activation: Activation,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Evaluation mode: `f(γ·(x − mean)/√(variance + ε) + β)` with given statistics.
    fn batch_norm_act_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        activation: Activation,
    ) -> FloatTensor<Self>;
}

/// `batch_norm.forward(x)` then `activation`, fused on flex. The same result as Burn's
/// `BatchNorm::forward` followed by [`Activation::apply`], including the running-statistics
/// update in training (biased batch variance, Burn's convention).
pub fn batch_norm_act<const D: usize>(
    bn: &BatchNorm,
    x: Tensor<D>,
    activation: Activation,
) -> Tensor<D> {
    let device = x.device();
    let training = device.is_autodiff() && bn.training.is_enabled();
    if !on_flex(&device) || x.dtype() != DType::F32 || (device.is_autodiff() && !training) {
        return activation.apply(bn.forward(x));
    }
    let gamma = bn.gamma.val().into_dispatch();
    let beta = bn.beta.val().into_dispatch();
    if !training {
        let mean = bn.running_mean.value().to_device(&device).into_dispatch();
        let var = bn.running_var.value().to_device(&device).into_dispatch();
        return Tensor::from_dispatch(<Dispatch as NormBackend>::batch_norm_act_eval(
            x.into_dispatch(),
            gamma,
            beta,
            mean,
            var,
            bn.epsilon,
            activation,
        ));
    }
    let (y, mean, var) = <Dispatch as NormBackend>::batch_norm_act_train(
        x.into_dispatch(),
        gamma,
        beta,
        bn.epsilon,
        activation,
    );
    let (mean, var) = (
        Tensor::<1>::from_dispatch(mean),
        Tensor::<1>::from_dispatch(var),
    );
    let momentum = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    bn.running_mean.update(
        running_mean
            .mul_scalar(1.0 - momentum)
            .add(mean.detach().mul_scalar(momentum))
            .detach(),
    );
    bn.running_var.update(
        running_var
            .mul_scalar(1.0 - momentum)
            .add(var.detach().mul_scalar(momentum))
            .detach(),
    );
    Tensor::from_dispatch(y)
}

impl NormBackend for Flex {
    fn batch_norm_act_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        activation: Activation,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dtype = x.dtype();
        let shape = x.layout().shape().clone();
        let geometry = Geometry::of(shape.as_slice());
        let (x, gamma, beta) = (f32_tensor(x), f32_tensor(gamma), f32_tensor(beta));
        let (y, mean, var) =
            geometry.train_forward(f32s(&x), f32s(&gamma), f32s(&beta), epsilon, activation);
        let channels = [geometry.channels];
        (
            from_f32(y, shape.as_slice(), dtype),
            from_f32(mean, &channels, dtype),
            from_f32(var, &channels, dtype),
        )
    }

    fn batch_norm_act_train_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        activation: Activation,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dtype = x.dtype();
        let shape = x.layout().shape().clone();
        let geometry = Geometry::of(shape.as_slice());
        let x = f32_tensor(x);
        let [gamma, beta, mean, variance] = [gamma, beta, mean, variance].map(f32_tensor);
        let mut dx = owned_f32(grad);
        let (dgamma, dbeta) = geometry.train_backward(
            f32s(&x),
            Stats::new(f32s(&mean), f32s(&variance), epsilon),
            f32s(&gamma),
            f32s(&beta),
            activation,
            dx.storage_mut::<f32>(),
        );
        let channels = [geometry.channels];
        (
            cast(dx, dtype),
            from_f32(dgamma, &channels, dtype),
            from_f32(dbeta, &channels, dtype),
        )
    }

    fn batch_norm_act_eval(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        activation: Activation,
    ) -> FlexTensor {
        let dtype = x.dtype();
        let geometry = Geometry::of(x.layout().shape().as_slice());
        let mut y = owned_f32(x);
        let [gamma, beta, mean, variance] = [gamma, beta, mean, variance].map(f32_tensor);
        let stats = Stats::new(f32s(&mean), f32s(&variance), epsilon);
        let (scale, shift) = stats.affine(f32s(&gamma), f32s(&beta));
        geometry.eval_in_place(y.storage_mut::<f32>(), &scale, &shift, activation);
        cast(y, dtype)
    }
}

impl<B: Backend + NormBackend, C: CheckpointStrategy> NormBackend for Autodiff<B, C> {
    fn batch_norm_act_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        activation: Activation,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct BatchNormActBackward;

        impl<B: Backend + NormBackend> Backward<B, 3> for BatchNormActBackward {
            type State = (
                NodeId,
                NodeId,
                NodeId,
                FloatTensor<B>,
                FloatTensor<B>,
                f64,
                Activation,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, gamma_state, beta_state, mean, variance, epsilon, activation) =
                    ops.state;
                let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
                let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma_state);
                let beta = checkpointer.retrieve_node_output::<FloatTensor<B>>(beta_state);
                let (dx, dgamma, dbeta) = B::batch_norm_act_train_backward(
                    x, gamma, beta, mean, variance, epsilon, activation, grad,
                );
                for (node, g) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let forward = |x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>| {
            let (x, gamma, beta) = (
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
            );
            B::batch_norm_act_train(x, gamma, beta, epsilon, activation)
        };
        match BatchNormActBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma_state = prep.checkpoint(&gamma);
                let beta_state = prep.checkpoint(&beta);
                let (y, mean, var) = forward(x, gamma, beta);
                let state = (
                    x_state,
                    gamma_state,
                    beta_state,
                    mean.clone(),
                    var.clone(),
                    epsilon,
                    activation,
                );
                let y = prep.finish(state, y);
                (y, Self::from_inner(mean), Self::from_inner(var))
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, var) = forward(x, gamma, beta);
                (
                    prep.finish(y),
                    Self::from_inner(mean),
                    Self::from_inner(var),
                )
            }
        }
    }

    /// Computed by the inner backend: the gradients are constants to autodiff (no second order).
    fn batch_norm_act_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        activation: Activation,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dgamma, dbeta) = B::batch_norm_act_train_backward(
            Self::inner(x),
            Self::inner(gamma),
            Self::inner(beta),
            Self::inner(mean),
            Self::inner(variance),
            epsilon,
            activation,
            Self::inner(grad),
        );
        (
            Self::from_inner(dx),
            Self::from_inner(dgamma),
            Self::from_inner(dbeta),
        )
    }

    /// Computed by the inner backend, as a constant: [`batch_norm_act`] sends evaluation on an
    /// autodiff device to Burn's differentiable `BatchNorm` instead.
    fn batch_norm_act_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        activation: Activation,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::batch_norm_act_eval(
            Self::inner(x),
            Self::inner(gamma),
            Self::inner(beta),
            Self::inner(mean),
            Self::inner(variance),
            epsilon,
            activation,
        ))
    }
}

/// A channel's statistics as the kernels use them.
struct Stats {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
}

impl Stats {
    fn new(mean: &[f32], variance: &[f32], epsilon: f64) -> Self {
        Self {
            mean: mean.iter().map(|&m| f64::from(m)).collect(),
            inv_std: variance
                .iter()
                .map(|&v| 1.0 / (f64::from(v) + epsilon).sqrt())
                .collect(),
        }
    }

    /// Per channel `(scale, shift)` with `γ·x̂ + β = scale·x + shift`.
    fn affine(&self, gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>) {
        (0..gamma.len())
            .map(|c| {
                let scale = f64::from(gamma[c]) * self.inv_std[c];
                (
                    scale as f32,
                    (f64::from(beta[c]) - self.mean[c] * scale) as f32,
                )
            })
            .unzip()
    }
}

/// An NCHW-like tensor as `batch` × `channels` planes of `plane` elements.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    channels: usize,
    plane: usize,
}

impl Geometry {
    fn of(shape: &[usize]) -> Self {
        Self {
            batch: shape[0],
            channels: shape.get(1).copied().unwrap_or(1),
            plane: shape.iter().skip(2).product(),
        }
    }

    fn count(&self) -> usize {
        self.batch * self.plane
    }

    /// Channel `c`'s planes of `data`, one per sample.
    fn planes<'a>(&self, data: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (channels, plane) = (self.channels, self.plane);
        (0..self.batch).map(move |n| &data[(n * channels + c) * plane..][..plane])
    }

    /// The planes of `data` grouped by channel, for one task per channel.
    fn planes_mut<'a>(&self, data: &'a mut [f32]) -> Vec<Vec<&'a mut [f32]>> {
        let mut by_channel: Vec<Vec<&mut [f32]>> = (0..self.channels)
            .map(|_| Vec::with_capacity(self.batch))
            .collect();
        for (i, plane) in data.chunks_mut(self.plane.max(1)).enumerate() {
            by_channel[i % self.channels].push(plane);
        }
        by_channel
    }

    fn train_forward(
        &self,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        epsilon: f64,
        activation: Activation,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut y = zeros(x.len());
        let count = self.count() as f64;
        let stats: Vec<(f32, f32)> = self
            .planes_mut(&mut y)
            .into_par_iter()
            .enumerate()
            .map(|(c, out)| {
                simd::dispatch(
                    #[inline(always)]
                    || {
                        let sum: f64 = self.planes(x, c).map(simd::sum).sum();
                        let mean = sum / count;
                        let squares: f64 = self
                            .planes(x, c)
                            .map(
                                #[inline(always)]
                                |p| simd::squares(p, mean),
                            )
                            .sum();
                        let var = squares / count;
                        let scale = f64::from(gamma[c]) / (var + epsilon).sqrt();
                        let shift = f64::from(beta[c]) - mean * scale;
                        for (src, dst) in self.planes(x, c).zip(out) {
                            simd::affine_act(src, dst, scale as f32, shift as f32, activation);
                        }
                        (mean as f32, var as f32)
                    },
                )
            })
            .collect();
        let (mean, var) = stats.into_iter().unzip();
        (y, mean, var)
    }

    /// Writes the input gradient into `grad` (which holds the output gradient on entry) and
    /// returns the gradients of γ and β.
    fn train_backward(
        &self,
        x: &[f32],
        stats: Stats,
        gamma: &[f32],
        beta: &[f32],
        activation: Activation,
        grad: &mut [f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let count = self.count() as f64;
        let sums: Vec<(f32, f32)> = self
            .planes_mut(grad)
            .into_par_iter()
            .enumerate()
            .map(|(c, mut dy)| {
                simd::dispatch(
                    #[inline(always)]
                    || {
                        let (mean, inv_std) = (stats.mean[c], stats.inv_std[c]);
                        let scale = f64::from(gamma[c]) * inv_std;
                        let shift = f64::from(beta[c]) - mean * scale;
                        let (mean32, inv32) = (mean as f32, inv_std as f32);
                        // dz = dy·f'(z) in place, with Σdz and Σdz·x̂.
                        let (mut sum_dz, mut sum_dz_xhat) = (0.0f64, 0.0f64);
                        for (src, dz) in self.planes(x, c).zip(dy.iter_mut()) {
                            let (a, b) = simd::act_grad(
                                src,
                                dz,
                                scale as f32,
                                shift as f32,
                                mean32,
                                inv32,
                                activation,
                            );
                            sum_dz += a;
                            sum_dz_xhat += b;
                        }
                        // dx = γ/σ · (dz − mean(dz) − x̂·mean(dz·x̂)).
                        let k = scale as f32;
                        let (mean_dz, mean_dz_xhat) =
                            ((sum_dz / count) as f32, (sum_dz_xhat / count) as f32);
                        for (src, d) in self.planes(x, c).zip(dy.iter_mut()) {
                            simd::bn_input_grad(src, d, k, mean_dz, mean_dz_xhat, mean32, inv32);
                        }
                        (sum_dz_xhat as f32, sum_dz as f32)
                    },
                )
            })
            .collect();
        sums.into_iter().unzip()
    }

    fn eval_in_place(&self, y: &mut [f32], scale: &[f32], shift: &[f32], activation: Activation) {
        let channels = self.channels;
        y.par_chunks_mut(self.plane.max(1))
            .enumerate()
            .for_each(|(i, plane)| {
                let c = i % channels;
                simd::dispatch(
                    #[inline(always)]
                    || simd::affine_act_in_place(plane, scale[c], shift[c], activation),
                )
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Device, Distribution};

    fn worst(a: &Tensor<4>, b: &Tensor<4>) -> f32 {
        let (a, b): (Vec<f32>, Vec<f32>) =
            (a.to_data().iter().collect(), b.to_data().iter().collect());
        a.iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    }

    fn worst1(a: Tensor<1>, b: Tensor<1>) -> f32 {
        let (a, b): (Vec<f32>, Vec<f32>) =
            (a.to_data().iter().collect(), b.to_data().iter().collect());
        a.iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    }

    /// Output, running statistics and the gradients of x, γ and β against Burn's `BatchNorm`
    /// and activation, for every activation, odd plane sizes and one-pixel planes; then the
    /// evaluation path with the running statistics it produced.
    #[test]
    fn matches_burns_batch_norm_and_activation() {
        let cases = [(2, 5, 7, 9), (3, 4, 1, 1), (1, 3, 16, 16), (4, 2, 5, 3)];
        let activations = [
            Activation::Identity,
            Activation::Relu,
            Activation::Relu6,
            Activation::Silu,
        ];
        for (b, c, h, w) in cases {
            for activation in activations {
                let device = Device::flex().autodiff();
                device.seed(11);
                let x = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.5, 2.0), &device);
                let up = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
                let bn = BatchNormConfig::new(c).with_momentum(0.3).init(&device);
                let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &device);
                let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &device);
                let bn = BatchNorm {
                    gamma: burn::module::Param::from_tensor(gamma),
                    beta: burn::module::Param::from_tensor(beta),
                    ..bn
                };
                let run = |ours: bool| {
                    let layer = bn.clone();
                    let x = x.clone().require_grad();
                    let y = if ours {
                        batch_norm_act(&layer, x.clone(), activation)
                    } else {
                        activation.apply(layer.forward(x.clone()))
                    };
                    let grads = (y.clone() * up.clone()).sum().backward();
                    let dx = x.grad(&grads).expect("x grad");
                    let dgamma = layer.gamma.grad(&grads).expect("gamma grad");
                    let dbeta = layer.beta.grad(&grads).expect("beta grad");
                    (y, dx, dgamma, dbeta, layer)
                };
                let (y0, dx0, dg0, db0, l0) = run(false);
                let (y1, dx1, dg1, db1, l1) = run(true);
                let what = format!("{activation:?} on {b}x{c}x{h}x{w}");
                assert!(worst(&y0, &y1) < 1e-4, "output, {what}");
                assert!(
                    worst(&dx0, &dx1) < 1e-4,
                    "x grad, {what}: {}",
                    worst(&dx0, &dx1)
                );
                assert!(worst1(dg0, dg1) < 1e-3, "gamma grad, {what}");
                assert!(worst1(db0, db1) < 1e-3, "beta grad, {what}");
                let stat = |l: &BatchNorm| (l.running_mean.value(), l.running_var.value());
                let ((m0, v0), (m1, v1)) = (stat(&l0), stat(&l1));
                assert!(
                    worst1(m0, m1) < 1e-5 && worst1(v0, v1) < 1e-4,
                    "running stats, {what}"
                );

                // Evaluation, with the statistics training left.
                let (e0, e1) = (l0.valid(), l1.valid());
                let xe = Tensor::<4>::from_data(x.to_data(), &Device::flex());
                let ye0 = activation.apply(e0.forward(xe.clone()));
                let ye1 = batch_norm_act(&e1, xe, activation);
                assert!(worst(&ye0, &ye1) < 1e-4, "evaluation, {what}");
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let x = Tensor::<4>::random([4, 6, 33, 35], Distribution::Normal(0.0, 1.0), &device);
        let bn = BatchNormConfig::new(6).init(&device);
        let run = || {
            let x = x.clone().require_grad();
            let y = batch_norm_act(&bn, x.clone(), Activation::Silu);
            let grads = (y.clone() * y.clone()).sum().backward();
            let dx: Vec<f32> = x.grad(&grads).expect("x grad").to_data().iter().collect();
            let y: Vec<f32> = y.to_data().iter().collect();
            (y, dx)
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a pool")
            .install(run);
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("a pool")
            .install(run);
        assert_eq!(one, three);
    }
}
