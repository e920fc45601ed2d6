//! In-plane resampling to the model's pixel spacing. A volume's slices are resampled from their
//! own spacing to `pixel_mm`, then centred on a `size`×`size` canvas (cropped where larger,
//! padded with air where smaller), so one millimetre is the same number of pixels for the model
//! whatever the scanner's field of view. The inverse takes the model's output back to the slice's
//! own grid. Split, predict and the endpoint use the same plan, from the bundle's preprocessing.

use ndarray::{Array2, ArrayView2, s};

use super::resize;

/// HU that padding holds: air.
pub const PAD_HU: f32 = -1024.0;

/// How one slice of `rows`×`cols` pixels maps to the model's canvas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpacingPlan {
    pub rows: usize,
    pub cols: usize,
    /// The slice resampled to the target spacing, before cropping or padding.
    pub resampled: (usize, usize),
    pub size: usize,
}

impl SpacingPlan {
    /// `spacing_mm` is (between rows, between columns), as DICOM's Pixel Spacing.
    pub fn new(rows: usize, cols: usize, spacing_mm: [f64; 2], pixel_mm: f64, size: usize) -> Self {
        let scaled = |n: usize, mm: f64| ((n as f64 * mm / pixel_mm).round() as usize).max(1);
        Self {
            rows,
            cols,
            resampled: (scaled(rows, spacing_mm[0]), scaled(cols, spacing_mm[1])),
            size,
        }
    }

    /// Offsets of the canvas within the resampled slice (positive: cropped) per axis.
    fn offsets(&self) -> (isize, isize) {
        let off = |n: usize| (n as isize - self.size as isize) / 2;
        (off(self.resampled.0), off(self.resampled.1))
    }

    /// The slice on the model's canvas: bilinear for intensities, `fill` outside the slice.
    pub fn to_model(&self, image: ArrayView2<f32>, fill: f32) -> Array2<f32> {
        let resampled = resize::bilinear(image, self.resampled.0, self.resampled.1);
        self.place(resampled.view(), fill)
    }

    /// Labels on the model's canvas: nearest neighbour, 0 outside the slice.
    pub fn labels_to_model(&self, labels: ArrayView2<u8>) -> Array2<u8> {
        let resampled = resize::nearest(labels, self.resampled.0, self.resampled.1);
        let mut out = Array2::zeros((self.size, self.size));
        self.copy_into(resampled.view(), &mut out);
        out
    }

    /// A model output (`size`×`size`) back on the slice's own grid; 0 where the canvas cropped.
    pub fn from_model(&self, values: ArrayView2<f32>) -> Array2<f32> {
        let (rh, rw) = self.resampled;
        let mut canvas = Array2::zeros((rh, rw));
        let (dy, dx) = self.offsets();
        let (ys, yd, h) = span(dy, rh, self.size);
        let (xs, xd, w) = span(dx, rw, self.size);
        canvas
            .slice_mut(s![ys..ys + h, xs..xs + w])
            .assign(&values.slice(s![yd..yd + h, xd..xd + w]));
        resize::bilinear(canvas.view(), self.rows, self.cols)
    }

    fn place(&self, resampled: ArrayView2<f32>, fill: f32) -> Array2<f32> {
        let mut out = Array2::from_elem((self.size, self.size), fill);
        self.copy_into(resampled, &mut out);
        out
    }

    fn copy_into<T: Copy>(&self, resampled: ArrayView2<T>, out: &mut Array2<T>) {
        let (rh, rw) = self.resampled;
        let (dy, dx) = self.offsets();
        let (ys, yd, h) = span(dy, rh, self.size);
        let (xs, xd, w) = span(dx, rw, self.size);
        out.slice_mut(s![yd..yd + h, xd..xd + w])
            .assign(&resampled.slice(s![ys..ys + h, xs..xs + w]));
    }
}

/// For an offset of the canvas within a source of `n` (positive: the source is larger): the
/// first source index, the first canvas index and the length they share.
fn span(offset: isize, n: usize, size: usize) -> (usize, usize, usize) {
    if offset >= 0 {
        (offset as usize, 0, size.min(n - offset as usize))
    } else {
        let d = (-offset) as usize;
        (0, d, n.min(size - d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wide_field_of_view_is_scaled_up_and_cropped_and_comes_back() {
        // 40×40 at 1 mm onto a 0.5 mm canvas of 64: 80×80 resampled, 8 cropped on each side.
        let plan = SpacingPlan::new(40, 40, [1.0, 1.0], 0.5, 64);
        assert_eq!(plan.resampled, (80, 80));
        let image = Array2::from_shape_fn((40, 40), |(y, x)| (y * 40 + x) as f32);
        let canvas = plan.to_model(image.view(), PAD_HU);
        assert_eq!(canvas.dim(), (64, 64));
        // Canvas pixel 0 is resampled pixel 8, whose centre is source (8.5 / 2 − 0.5) = 3.75.
        assert!(
            (canvas[(0, 0)] - (3.75 * 40.0 + 3.75)).abs() < 1e-3,
            "{}",
            canvas[(0, 0)]
        );
        let back = plan.from_model(canvas.view());
        assert_eq!(back.dim(), (40, 40));
        // The centre survives the trip; the cropped rim reads as zero-weighted.
        assert!((back[(20, 20)] - image[(20, 20)]).abs() < 1.0);
    }

    #[test]
    fn a_narrow_field_of_view_is_padded_with_air_and_the_pad_drops_on_the_way_back() {
        // 30×20 at (0.5, 1.0) mm onto 1 mm: 15×20, centred in 32×32.
        let plan = SpacingPlan::new(30, 20, [0.5, 1.0], 1.0, 32);
        assert_eq!(plan.resampled, (15, 20));
        let image = Array2::from_elem((30, 20), 100.0f32);
        let canvas = plan.to_model(image.view(), PAD_HU);
        assert_eq!(canvas[(0, 0)], PAD_HU);
        assert_eq!(canvas[(16, 16)], 100.0);
        let inside = canvas.iter().filter(|&&v| v == 100.0).count();
        assert_eq!(inside, 15 * 20);
        let labels = plan.labels_to_model(Array2::from_elem((30, 20), 2u8).view());
        assert_eq!(labels.iter().filter(|&&l| l == 2).count(), 15 * 20);
        let probs = canvas.mapv(|v| if v == 100.0 { 0.75 } else { 0.0 });
        let back = plan.from_model(probs.view());
        assert_eq!(back.dim(), (30, 20));
        assert!(back.iter().all(|&p| (p - 0.75).abs() < 1e-6));
    }
}
