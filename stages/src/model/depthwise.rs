//! Depthwise convolutions (one filter per channel, `groups == channels`) on flex: the forward
//! pass and both gradients as direct loops over (sample, channel) planes, row by row with every
//! kernel tap so a row stays in L1, TF `SAME`'s asymmetric padding in the loop bounds (Burn
//! would pad a copy of the input first, on one thread). Each output element sums its taps in
//! kernel order and the weight gradient sums planes in batch order, so results do not depend on
//! the number of threads.

use burn::backend::flex::FlexTensor;
use burn::backend::ops::ConvOptions;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::conv::{output_size, valid_outputs};
use super::flex::{dims4, f32s, zeros};
use super::simd;

/// `conv2d(x, w)` (no bias) of a depthwise convolution, or `None` when it is not one.
pub(super) fn conv2d(
    x: &FlexTensor,
    w: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let planes = Planes::of_forward(x, w, options)?;
    let (xc, wc) = (x.to_contiguous(), w.to_contiguous());
    let data = planes.forward(f32s(&xc), f32s(&wc));
    let shape = [
        planes.count / planes.channels,
        planes.channels,
        planes.out_height,
        planes.out_width,
    ];
    Some(FlexTensor::from_data(TensorData::new(data, shape)))
}

/// The input gradient of a depthwise convolution, or `None` when it is not one.
pub(super) fn x_grad(
    x: &FlexTensor,
    w: &FlexTensor,
    grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let planes = Planes::new(x, w, grad, options)?;
    let (wc, g) = (w.to_contiguous(), grad.to_contiguous());
    let data = planes.x_grad(f32s(&wc), f32s(&g));
    Some(FlexTensor::from_data(TensorData::new(
        data,
        x.layout().shape().clone(),
    )))
}

/// The weight gradient of a depthwise convolution, or `None` when it is not one.
pub(super) fn weight_grad(
    x: &FlexTensor,
    w: &FlexTensor,
    grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let planes = Planes::new(x, w, grad, options)?;
    let (xc, g) = (x.to_contiguous(), grad.to_contiguous());
    let data = planes.weight_grad(f32s(&xc), f32s(&g));
    Some(FlexTensor::from_data(TensorData::new(
        data,
        w.layout().shape().clone(),
    )))
}

/// The geometry of one depthwise convolution, in f32 on contiguous NCHW data.
#[derive(Debug, Clone, Copy)]
struct Planes {
    /// batch × channels.
    count: usize,
    channels: usize,
    height: usize,
    width: usize,
    out_height: usize,
    out_width: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: [usize; 2],
}

impl Planes {
    /// `None` when the shapes are not a canonical f32 depthwise convolution (then Burn's generic
    /// gradients are used).
    fn new(
        x: &FlexTensor,
        weight: &FlexTensor,
        grad: &FlexTensor,
        o: &ConvOptions<2>,
    ) -> Option<Self> {
        Self::with_output(x, weight, dims4(grad)?, o).filter(|_| grad.dtype() == DType::F32)
    }

    /// The geometry for an output of shape `[gb, gc, oh, ow]`.
    fn with_output(
        x: &FlexTensor,
        weight: &FlexTensor,
        [gb, gc, oh, ow]: [usize; 4],
        o: &ConvOptions<2>,
    ) -> Option<Self> {
        let ([b, c, h, w], [wc, per_group, kh, kw]) = (dims4(x)?, dims4(weight)?);
        let f32_only = [x, weight].iter().all(|t| t.dtype() == DType::F32);
        let depthwise = o.groups == c && wc == c && per_group == 1 && gb == b && gc == c;
        (f32_only && depthwise).then_some(Self {
            count: b * c,
            channels: c,
            height: h,
            width: w,
            out_height: oh,
            out_width: ow,
            kernel: [kh, kw],
            stride: o.stride,
            dilation: o.dilation,
            padding: o.padding_begin(),
        })
    }

    /// The geometry of a depthwise convolution's forward pass (its output shape computed from
    /// the options), `None` when it is not a canonical f32 depthwise convolution.
    fn of_forward(x: &FlexTensor, weight: &FlexTensor, o: &ConvOptions<2>) -> Option<Self> {
        let ([b, c, h, w], [_, _, kh, kw]) = (dims4(x)?, dims4(weight)?);
        let [(top, bottom), (left, right)] = o.padding;
        let oh = output_size(h, (top, bottom), kh, o.stride[0], o.dilation[0])?;
        let ow = output_size(w, (left, right), kw, o.stride[1], o.dilation[1])?;
        Self::with_output(x, weight, [b, c, oh, ow], o)
    }

    /// For each kernel tap: (kernel row, kernel column, output rows, output columns, input row
    /// offset, input column offset).
    fn taps(
        &self,
    ) -> impl Iterator<
        Item = (
            usize,
            usize,
            std::ops::Range<usize>,
            std::ops::Range<usize>,
            isize,
            isize,
        ),
    > + '_ {
        let [kh_n, kw_n] = self.kernel;
        (0..kh_n).flat_map(move |kh| {
            (0..kw_n).map(move |kw| {
                let row = (kh * self.dilation[0]) as isize - self.padding[0] as isize;
                let col = (kw * self.dilation[1]) as isize - self.padding[1] as isize;
                (
                    kh,
                    kw,
                    valid_outputs(row, self.stride[0], self.height, self.out_height),
                    valid_outputs(col, self.stride[1], self.width, self.out_width),
                    row,
                    col,
                )
            })
        })
    }

    /// The taps, each with its index in the kernel, once per convolution.
    fn tap_list(&self) -> Vec<Tap> {
        self.taps()
            .map(|(kh, kw, rows, cols, row, col)| Tap {
                index: kh * self.kernel[1] + kw,
                rows,
                cols,
                row,
                col,
            })
            .collect()
    }

    /// `y[p, oh, ow] = Σ_taps w[c, tap] · x[p, oh·sh + row, ow·sw + col]`, taps in order. Row
    /// by row, every tap: an output row stays in L1 while all taps add into it.
    fn forward(&self, x: &[f32], weight: &[f32]) -> Vec<f32> {
        let (h, w, oh_n, ow_n) = (self.height, self.width, self.out_height, self.out_width);
        let taps = self.kernel[0] * self.kernel[1];
        let [sh, sw] = self.stride;
        let tap_list = self.tap_list();
        let mut out = zeros(self.count * oh_n * ow_n);
        out.par_chunks_mut((oh_n * ow_n).max(1))
            .enumerate()
            .for_each(|(plane, y)| {
                let c = plane % self.channels;
                let xp = &x[plane * h * w..(plane + 1) * h * w];
                let wc = &weight[c * taps..(c + 1) * taps];
                simd::dispatch(
                    #[inline(always)]
                    || {
                        for (oh, y_row) in y.chunks_mut(ow_n.max(1)).enumerate() {
                            for t in tap_list.iter().filter(|t| t.rows.contains(&oh)) {
                                let wv = wc[t.index];
                                let ih = ((oh * sh) as isize + t.row) as usize;
                                let x_row = &xp[ih * w..(ih + 1) * w];
                                let dst = &mut y_row[t.cols.clone()];
                                let first = ((t.cols.start * sw) as isize + t.col) as usize;
                                if sw == 1 {
                                    for (d, &v) in dst.iter_mut().zip(&x_row[first..]) {
                                        *d += v * wv;
                                    }
                                } else {
                                    for (i, d) in dst.iter_mut().enumerate() {
                                        *d += x_row[first + i * sw] * wv;
                                    }
                                }
                            }
                        }
                    },
                )
            });
        out
    }

    /// `dx[p, ih, iw] = Σ_taps w[c, tap] · dy[p, oh, ow]` over the outputs that read it, input
    /// row by input row, taps in order.
    fn x_grad(&self, weight: &[f32], grad: &[f32]) -> Vec<f32> {
        let (h, w, oh_n, ow_n) = (self.height, self.width, self.out_height, self.out_width);
        let taps = self.kernel[0] * self.kernel[1];
        let [sh, sw] = self.stride;
        let tap_list = self.tap_list();
        let mut out = zeros(self.count * h * w);
        out.par_chunks_mut((h * w).max(1))
            .enumerate()
            .for_each(|(plane, dx)| {
                let c = plane % self.channels;
                let g = &grad[plane * oh_n * ow_n..(plane + 1) * oh_n * ow_n];
                let wc = &weight[c * taps..(c + 1) * taps];
                simd::dispatch(
                    #[inline(always)]
                    || {
                        for (ih, dx_row) in dx.chunks_mut(w.max(1)).enumerate() {
                            for t in &tap_list {
                                let d = ih as isize - t.row;
                                if d < 0 || d % sh as isize != 0 {
                                    continue;
                                }
                                let oh = (d / sh as isize) as usize;
                                if !t.rows.contains(&oh) {
                                    continue;
                                }
                                let wv = wc[t.index];
                                let g_row = &g[oh * ow_n + t.cols.start..oh * ow_n + t.cols.end];
                                let first = ((t.cols.start * sw) as isize + t.col) as usize;
                                if sw == 1 {
                                    let dst = &mut dx_row[first..first + g_row.len()];
                                    for (d, &gv) in dst.iter_mut().zip(g_row) {
                                        *d += gv * wv;
                                    }
                                } else {
                                    for (i, &gv) in g_row.iter().enumerate() {
                                        dx_row[first + i * sw] += gv * wv;
                                    }
                                }
                            }
                        }
                    },
                );
            });
        out
    }

    /// `dw[c, tap] = Σ_(n, oh, ow) dy · x`, per plane output row by output row (each tap's sum
    /// in row order), then over the batch in order: the result does not depend on threads.
    fn weight_grad(&self, x: &[f32], grad: &[f32]) -> Vec<f32> {
        let (h, w, oh_n, ow_n) = (self.height, self.width, self.out_height, self.out_width);
        let taps = self.kernel[0] * self.kernel[1];
        let [sh, sw] = self.stride;
        let tap_list = self.tap_list();
        let partial: Vec<Vec<f64>> = (0..self.count)
            .into_par_iter()
            .map(|plane| {
                simd::dispatch(
                    #[inline(always)]
                    || {
                        let xp = &x[plane * h * w..(plane + 1) * h * w];
                        let g = &grad[plane * oh_n * ow_n..(plane + 1) * oh_n * ow_n];
                        let mut acc = vec![0.0f64; taps];
                        for oh in 0..oh_n {
                            for t in tap_list.iter().filter(|t| t.rows.contains(&oh)) {
                                let ih = ((oh * sh) as isize + t.row) as usize;
                                let g_row = &g[oh * ow_n + t.cols.start..oh * ow_n + t.cols.end];
                                let x_row = &xp[ih * w..(ih + 1) * w];
                                let first = ((t.cols.start * sw) as isize + t.col) as usize;
                                acc[t.index] += f64::from(if sw == 1 {
                                    dot(g_row, &x_row[first..first + g_row.len()])
                                } else {
                                    g_row
                                        .iter()
                                        .enumerate()
                                        .map(|(i, &gv)| gv * x_row[first + i * sw])
                                        .sum::<f32>()
                                });
                            }
                        }
                        acc
                    },
                )
            })
            .collect();
        let mut out = vec![0.0f32; self.channels * taps];
        for c in 0..self.channels {
            for t in 0..taps {
                let total: f64 = (c..self.count)
                    .step_by(self.channels)
                    .map(|p| partial[p][t])
                    .sum();
                out[c * taps + t] = total as f32;
            }
        }
        out
    }
}

/// One kernel tap of a depthwise convolution: its index in the kernel, the output rows and
/// columns where it sees the input, and the input offset of output (0, 0).
#[derive(Clone, Debug)]
struct Tap {
    index: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    row: isize,
    col: isize,
}

/// A dot product in eight lanes, so the compiler can vectorise it.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}
