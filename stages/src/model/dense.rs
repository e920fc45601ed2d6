//! Dense (`groups == 1`) k×k convolutions on flex through im2col straight from NCHW, and their
//! input gradient as another such convolution.
//!
//! flex's own forward pass first copies the whole input from NCHW to NHWC on one thread, then
//! multiplies tiles and scatters each tile back into NCHW; its input gradient is a transposed
//! convolution whose column buffer is scattered into the output one element at a time. Here one
//! task per (sample, band of output rows) gathers that band's columns straight from NCHW (whole
//! rows at a time where the stride is 1), one matrix product `W · columns` gives the band of
//! every output channel, and the bands are copied into the output planes. The weight gradient
//! multiplies each band's output gradient by the same columns, transposed. The input gradient of a stride-1 convolution is
//! the convolution of the output gradient with the flipped, transposed kernel, so it takes the
//! same path. The bands do not depend on the number of threads and each output element is one dot
//! product, so neither do the results.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvOptions, FloatTensorOps};
use burn::tensor::{DType, Slice, TensorData};
use rayon::prelude::*;

use super::conv::{output_size, valid_outputs};
use super::flex::{dims4, f32s, matmul_nt, zeros};

/// The largest column buffer of one band, in elements (4 MiB of f32: it stays in cache).
const BAND_ELEMENTS: usize = 1 << 20;

/// The fewest (sample, band) tasks a convolution is split into.
const MIN_TASKS: usize = 16;

/// The geometry of one dense convolution.
#[derive(Clone, Copy, Debug)]
struct Dense {
    batch: usize,
    c_in: usize,
    height: usize,
    width: usize,
    c_out: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// (top, bottom), (left, right).
    padding: [(usize, usize); 2],
    out_height: usize,
    out_width: usize,
}

impl Dense {
    /// `None` unless `x` and `w` are 4-D f32, `groups == 1` and the kernel is larger than 1×1
    /// (flex multiplies 1×1 convolutions directly already).
    fn new(x: &FlexTensor, w: &FlexTensor, options: &ConvOptions<2>) -> Option<Self> {
        let ([batch, c_in, height, width], [c_out, per_group, kh, kw]) = (dims4(x)?, dims4(w)?);
        let usable = options.groups == 1
            && per_group == c_in
            && kh * kw > 1
            && x.dtype() == DType::F32
            && w.dtype() == DType::F32
            && options.stride.iter().all(|&s| s > 0)
            && options.dilation.iter().all(|&d| d > 0);
        if !usable {
            return None;
        }
        let [(top, bottom), (left, right)] = options.padding;
        let out_height = output_size(
            height,
            (top, bottom),
            kh,
            options.stride[0],
            options.dilation[0],
        )?;
        let out_width = output_size(
            width,
            (left, right),
            kw,
            options.stride[1],
            options.dilation[1],
        )?;
        Some(Self {
            batch,
            c_in,
            height,
            width,
            c_out,
            kernel: [kh, kw],
            stride: options.stride,
            dilation: options.dilation,
            padding: options.padding,
            out_height,
            out_width,
        })
    }

    /// Whether `grad` can be this convolution's output gradient: f32, of the output's shape.
    fn is_output_gradient(&self, grad: &FlexTensor) -> bool {
        grad.dtype() == DType::F32
            && dims4(grad) == Some([self.batch, self.c_out, self.out_height, self.out_width])
    }

    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// Output rows per band: at most [`BAND_ELEMENTS`] of columns per band, and at least
    /// [`MIN_TASKS`] bands over the batch, so a few threads all have work (a fixed number, so
    /// the bands, and the results, do not depend on the thread count).
    fn band_rows(&self) -> usize {
        let per_row = (self.c_in * self.taps() * self.out_width).max(1);
        let by_memory = BAND_ELEMENTS / per_row;
        let tasks = MIN_TASKS;
        let bands_per_sample = tasks.div_ceil(self.batch.max(1));
        let by_tasks = self.out_height.div_ceil(bands_per_sample);
        by_memory.min(by_tasks).clamp(1, self.out_height.max(1))
    }

    /// The columns of output rows `rows` of sample `n`: row `(ci, i, j)` of the result holds
    /// `x[n, ci, oh·sh + i·dh − top, ow·sw + j·dw − left]` for each `(oh, ow)` of the band
    /// (zero outside the input).
    fn columns(&self, x: &[f32], n: usize, rows: std::ops::Range<usize>) -> Vec<f32> {
        let kw_n = self.kernel[1];
        let [sh, sw] = self.stride;
        let [dh, dw] = self.dilation;
        let [(top, _), (left, _)] = self.padding;
        let (h, w, ow_n) = (self.height, self.width, self.out_width);
        let band = rows.len() * ow_n;
        // Every element is written once, in order (no zero fill first).
        let mut cols = Vec::with_capacity(self.c_in * self.taps() * band);
        for row in 0..self.c_in * self.taps() {
            let ci = row / self.taps();
            let (i, j) = ((row % self.taps()) / kw_n, row % kw_n);
            let plane = &x[(n * self.c_in + ci) * h * w..][..h * w];
            let col_offset = (j * dw) as isize - left as isize;
            let cols_ok = valid_outputs(col_offset, sw, w, ow_n);
            let row_offset = (i * dh) as isize - top as isize;
            let first = ((cols_ok.start * sw) as isize + col_offset).max(0) as usize;
            for oh in rows.clone() {
                let ih = (oh * sh) as isize + row_offset;
                let end = cols.len() + ow_n;
                if cols_ok.is_empty() || ih < 0 || ih >= h as isize {
                    cols.resize(end, 0.0);
                    continue;
                }
                let src = &plane[ih as usize * w..][..w];
                cols.resize(cols.len() + cols_ok.start, 0.0);
                if sw == 1 {
                    cols.extend_from_slice(&src[first..][..cols_ok.len()]);
                } else {
                    cols.extend((0..cols_ok.len()).map(|k| src[first + k * sw]));
                }
                cols.resize(end, 0.0);
            }
        }
        cols
    }

    /// `conv2d(x, w)` without bias, NCHW: one task per (sample, band of output rows) gathers its
    /// columns and multiplies them; the bands are then copied into the output planes.
    fn forward(&self, x: &[f32], w: FlexTensor) -> Vec<f32> {
        let k = self.c_in * self.taps();
        let (oh_n, ow_n) = (self.out_height, self.out_width);
        let weight = Flex::float_reshape(w, [self.c_out, k].into());
        let band_rows = self.band_rows();
        let bands = oh_n.div_ceil(band_rows);
        let products: Vec<FlexTensor> = (0..self.batch * bands)
            .into_par_iter()
            .map(|task| {
                let (n, b) = (task / bands, task % bands);
                let rows = b * band_rows..((b + 1) * band_rows).min(oh_n);
                let band = rows.len() * ow_n;
                let cols = self.columns(x, n, rows);
                let cols = FlexTensor::from_data(TensorData::new(cols, [k, band]));
                Flex::float_matmul(weight.clone(), cols)
            })
            .collect();
        let mut out = zeros(self.batch * self.c_out * oh_n * ow_n);
        out.par_chunks_mut(oh_n * ow_n)
            .enumerate()
            .for_each(|(plane, dst)| {
                let (n, co) = (plane / self.c_out, plane % self.c_out);
                for b in 0..bands {
                    let start = b * band_rows * ow_n;
                    let band = (((b + 1) * band_rows).min(oh_n) - b * band_rows) * ow_n;
                    let product = f32s(&products[n * bands + b]);
                    dst[start..][..band].copy_from_slice(&product[co * band..][..band]);
                }
            });
        out
    }
}

impl Dense {
    /// The weight gradient `Σₙ Σ_(oh,ow) dy[n, co, oh, ow] · x[n, ci, oh·sh + i·dh − top, …]`
    /// through the same (sample, band) columns as the forward pass: one matrix product
    /// `dy_band · columnsᵀ` per band, accumulated in a fixed number of groups of consecutive bands
    /// (each group in band order), and the groups summed in a fixed order. Neither the grouping
    /// nor the order depends on the number of threads.
    fn weight_grad(&self, x: &[f32], grad: FlexTensor) -> Vec<f32> {
        let k = self.c_in * self.taps();
        let (oh_n, ow_n) = (self.out_height, self.out_width);
        let band_rows = self.band_rows();
        let bands = oh_n.div_ceil(band_rows);
        let tasks = self.batch * bands;
        let size = self.c_out * k;
        // At most MIN_TASKS partial sums, and at most 64 MiB of them.
        let groups = tasks
            .min(MIN_TASKS)
            .min(((16usize << 20) / size.max(1)).max(1));
        let grad = Flex::float_reshape(grad, [self.batch, self.c_out, oh_n * ow_n].into());
        let partials: Vec<Vec<f32>> = (0..groups)
            .into_par_iter()
            .map(|group| {
                let mut sum = vec![0.0f32; size];
                for task in group * tasks / groups..(group + 1) * tasks / groups {
                    let (n, b) = (task / bands, task % bands);
                    let rows = b * band_rows..((b + 1) * band_rows).min(oh_n);
                    let band = rows.len() * ow_n;
                    let cols = self.columns(x, n, rows.clone());
                    let cols = FlexTensor::from_data(TensorData::new(cols, [1, k, band]));
                    let dy = Flex::float_slice(
                        grad.clone(),
                        &[
                            Slice::from(n..n + 1),
                            Slice::from(..),
                            Slice::from(rows.start * ow_n..rows.end * ow_n),
                        ],
                    );
                    let product = matmul_nt(dy, cols);
                    for (s, p) in sum.iter_mut().zip(f32s(&product)) {
                        *s += p;
                    }
                }
                sum
            })
            .collect();
        let mut out = vec![0.0f32; size];
        out.par_chunks_mut(1 << 14)
            .enumerate()
            .for_each(|(chunk, dst)| {
                let start = chunk << 14;
                for partial in &partials {
                    for (d, p) in dst.iter_mut().zip(&partial[start..]) {
                        *d += p;
                    }
                }
            });
        out
    }
}

/// `conv2d(x, w)` (no bias) of a dense k×k convolution, or `None` when [`Dense::new`] does not
/// apply.
pub(super) fn conv2d(
    x: &FlexTensor,
    w: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let geometry = Dense::new(x, w, options)?;
    let x = x.to_contiguous();
    let data = geometry.forward(f32s(&x), w.to_contiguous());
    let shape = [
        geometry.batch,
        geometry.c_out,
        geometry.out_height,
        geometry.out_width,
    ];
    Some(FlexTensor::from_data(TensorData::new(data, shape)))
}

/// The weight gradient of a dense k×k convolution, or `None` when [`Dense::new`] does not apply.
pub(super) fn weight_grad(
    x: &FlexTensor,
    w: &FlexTensor,
    grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let geometry = Dense::new(x, w, options).filter(|g| g.is_output_gradient(grad))?;
    let x = x.to_contiguous();
    let data = geometry.weight_grad(f32s(&x), grad.clone());
    Some(FlexTensor::from_data(TensorData::new(
        data,
        w.layout().shape().clone(),
    )))
}

/// The input gradient of a dense k×k stride-1 convolution: the output gradient convolved with the
/// kernel flipped in both axes and with its channel axes swapped, padded by `k − 1 − p` on each
/// side. `None` for strided or dilated convolutions (flex's transposed convolution does those).
pub(super) fn x_grad(
    x: &FlexTensor,
    w: &FlexTensor,
    grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let forward = Dense::new(x, w, options)?;
    let [kh, kw] = forward.kernel;
    let [(top, bottom), (left, right)] = forward.padding;
    let fits = forward.stride == [1, 1]
        && forward.dilation == [1, 1]
        && top.max(bottom) < kh
        && left.max(right) < kw
        && forward.is_output_gradient(grad);
    if !fits {
        return None;
    }
    let w = w.to_contiguous();
    let weights = f32s(&w);
    let (c_in, c_out) = (forward.c_in, forward.c_out);
    let mut flipped = vec![0.0f32; weights.len()];
    for co in 0..c_out {
        for ci in 0..c_in {
            for i in 0..kh {
                for j in 0..kw {
                    flipped[((ci * c_out + co) * kh + i) * kw + j] =
                        weights[((co * c_in + ci) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)];
                }
            }
        }
    }
    let flipped = FlexTensor::from_data(TensorData::new(flipped, [c_in, c_out, kh, kw]));
    let options = ConvOptions::new_with_padding(
        [1, 1],
        [
            (kh - 1 - top, kh - 1 - bottom),
            (kw - 1 - left, kw - 1 - right),
        ],
        [1, 1],
        1,
    );
    let dx = conv2d(grad, &flipped, &options)?;
    (dx.layout().shape().as_slice() == x.layout().shape().as_slice()).then_some(dx)
}
