//! The inner loops of the fused CPU kernels, written so the compiler vectorises them, and run
//! under the widest instruction set the CPU has (AVX-512, AVX2 + FMA, …), detected at run time
//! through `pulp`. Nothing here uses FMA contraction or reorders a sum differently per
//! instruction set: results are the same on every x86-64.

use super::activation::{Activation, sigmoid};

/// Runs `f` compiled for the best instruction set this CPU supports. `f` and what it calls
/// must be inlined into it (`#[inline(always)]`) for that to reach the loops.
#[inline(always)]
pub(crate) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

const LANES: usize = 16;

/// Σx, in f64, over 16 interleaved lanes then across them.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v)).sum();
    for chunk in chunks {
        for i in 0..LANES {
            lanes[i] += f64::from(chunk[i]);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Σ(x − mean)², in f64.
#[inline(always)]
pub(crate) fn squares(x: &[f32], mean: f64) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| (f64::from(v) - mean) * (f64::from(v) - mean))
        .sum();
    for chunk in chunks {
        for i in 0..LANES {
            let d = f64::from(chunk[i]) - mean;
            lanes[i] += d * d;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// `dst = f(scale·src + shift)`.
#[inline(always)]
pub(crate) fn affine_act(src: &[f32], dst: &mut [f32], scale: f32, shift: f32, a: Activation) {
    match a {
        Activation::Identity => map(
            src,
            dst,
            #[inline(always)]
            |x| x * scale + shift,
        ),
        Activation::Relu => map(
            src,
            dst,
            #[inline(always)]
            |x| (x * scale + shift).max(0.0),
        ),
        Activation::Relu6 => map(
            src,
            dst,
            #[inline(always)]
            |x| (x * scale + shift).clamp(0.0, 6.0),
        ),
        Activation::Silu => map(
            src,
            dst,
            #[inline(always)]
            |x| {
                let z = x * scale + shift;
                z * sigmoid(z)
            },
        ),
    }
}

/// `y = f(scale·y + shift)` in place.
#[inline(always)]
pub(crate) fn affine_act_in_place(y: &mut [f32], scale: f32, shift: f32, a: Activation) {
    match a {
        Activation::Identity => map_in_place(
            y,
            #[inline(always)]
            |x| x * scale + shift,
        ),
        Activation::Relu => map_in_place(
            y,
            #[inline(always)]
            |x| (x * scale + shift).max(0.0),
        ),
        Activation::Relu6 => map_in_place(
            y,
            #[inline(always)]
            |x| (x * scale + shift).clamp(0.0, 6.0),
        ),
        Activation::Silu => map_in_place(
            y,
            #[inline(always)]
            |x| {
                let z = x * scale + shift;
                z * sigmoid(z)
            },
        ),
    }
}

#[inline(always)]
fn map(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

#[inline(always)]
fn map_in_place(y: &mut [f32], f: impl Fn(f32) -> f32) {
    for v in y.iter_mut() {
        *v = f(*v);
    }
}

/// With `z = scale·x + shift` and `x̂ = (x − mean)·inv_std`: `g = g·f'(z)` in place, returning
/// `(Σ g, Σ g·x̂)` of the new `g`, in f64.
#[inline(always)]
pub(crate) fn act_grad(
    x: &[f32],
    g: &mut [f32],
    scale: f32,
    shift: f32,
    mean: f32,
    inv_std: f32,
    a: Activation,
) -> (f64, f64) {
    match a {
        Activation::Identity => act_grad_with(
            x,
            g,
            mean,
            inv_std,
            #[inline(always)]
            |_| 1.0,
            shift,
            scale,
        ),
        Activation::Relu => act_grad_with(
            x,
            g,
            mean,
            inv_std,
            #[inline(always)]
            |z| f32::from(u8::from(z > 0.0)),
            shift,
            scale,
        ),
        Activation::Relu6 => act_grad_with(
            x,
            g,
            mean,
            inv_std,
            #[inline(always)]
            |z| f32::from(u8::from(z > 0.0 && z < 6.0)),
            shift,
            scale,
        ),
        Activation::Silu => act_grad_with(
            x,
            g,
            mean,
            inv_std,
            #[inline(always)]
            |z| {
                let s = sigmoid(z);
                s + z * s * (1.0 - s)
            },
            shift,
            scale,
        ),
    }
}

#[inline(always)]
fn act_grad_with(
    x: &[f32],
    g: &mut [f32],
    mean: f32,
    inv_std: f32,
    derivative: impl Fn(f32) -> f32,
    shift: f32,
    scale: f32,
) -> (f64, f64) {
    let mut sum_g = [0.0f64; LANES];
    let mut sum_gx = [0.0f64; LANES];
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn step(
        x: &[f32],
        g: &mut [f32],
        sum_g: &mut [f64],
        sum_gx: &mut [f64],
        derivative: &impl Fn(f32) -> f32,
        (scale, shift, mean, inv_std): (f32, f32, f32, f32),
    ) {
        for i in 0..x.len() {
            let dz = g[i] * derivative(x[i] * scale + shift);
            g[i] = dz;
            sum_g[i] += f64::from(dz);
            sum_gx[i] += f64::from(dz) * f64::from((x[i] - mean) * inv_std);
        }
    }
    let p = (scale, shift, mean, inv_std);
    let whole = x.len() / LANES * LANES;
    let (x_body, x_tail) = x.split_at(whole);
    let (g_body, g_tail) = g.split_at_mut(whole);
    for (xc, gc) in x_body
        .chunks_exact(LANES)
        .zip(g_body.chunks_exact_mut(LANES))
    {
        step(xc, gc, &mut sum_g, &mut sum_gx, &derivative, p);
    }
    let (mut tail_g, mut tail_gx) = ([0.0f64; LANES], [0.0f64; LANES]);
    step(x_tail, g_tail, &mut tail_g, &mut tail_gx, &derivative, p);
    (
        sum_g.iter().sum::<f64>() + tail_g.iter().sum::<f64>(),
        sum_gx.iter().sum::<f64>() + tail_gx.iter().sum::<f64>(),
    )
}

/// BatchNorm's input gradient in place: `g = k·(g − mean_g − x̂·mean_gx)`.
#[inline(always)]
pub(crate) fn bn_input_grad(
    x: &[f32],
    g: &mut [f32],
    k: f32,
    mean_g: f32,
    mean_gx: f32,
    mean: f32,
    inv_std: f32,
) {
    for (d, &v) in g.iter_mut().zip(x) {
        let xhat = (v - mean) * inv_std;
        *d = k * (*d - mean_g - xhat * mean_gx);
    }
}

/// `y = x·s` over one plane: the squeeze-excitation gate's forward.
#[inline(always)]
pub(crate) fn scale(x: &[f32], y: &mut [f32], s: f32) {
    map(
        x,
        y,
        #[inline(always)]
        |v| v * s,
    );
}

/// `y = y·s` in place over one plane.
#[inline(always)]
pub(crate) fn scale_in_place(y: &mut [f32], s: f32) {
    map_in_place(
        y,
        #[inline(always)]
        |v| v * s,
    );
}

/// `g = g·s` in place, returning `Σ g·x` (before scaling) in f64: the gate's backward.
#[inline(always)]
pub(crate) fn scale_grad(x: &[f32], g: &mut [f32], s: f32) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let whole = x.len() / LANES * LANES;
    let (x_body, x_tail) = x.split_at(whole);
    let (g_body, g_tail) = g.split_at_mut(whole);
    for (xc, gc) in x_body
        .chunks_exact(LANES)
        .zip(g_body.chunks_exact_mut(LANES))
    {
        for i in 0..LANES {
            lanes[i] += f64::from(gc[i]) * f64::from(xc[i]);
            gc[i] *= s;
        }
    }
    let mut tail = 0.0f64;
    for (gv, &xv) in g_tail.iter_mut().zip(x_tail) {
        tail += f64::from(*gv) * f64::from(xv);
        *gv *= s;
    }
    lanes.iter().sum::<f64>() + tail
}
