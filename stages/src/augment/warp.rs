//! Applying a geometry to a slice: a copy for the identity, mirrored copies for pure flips, and
//! resampling through the composed map otherwise.

use super::resample::resample;
use super::spatial::{Geometry, Kind};

/// Resamples `image` (`channels` × `height` × `width`, row-major) bilinearly and `labels`
/// (`height` × `width`) by nearest neighbour through `geometry`; positions outside the source
/// read 0 for both.
pub(super) fn warp(
    image: &[f32],
    labels: &[u8],
    channels: usize,
    height: usize,
    width: usize,
    geometry: &Geometry,
) -> (Vec<f32>, Vec<u8>) {
    match geometry.kind {
        Kind::Identity => (image.to_vec(), labels.to_vec()),
        Kind::Flips {
            horizontal,
            vertical,
        } => (
            mirror(image, height, width, horizontal, vertical),
            mirror(labels, height, width, horizontal, vertical),
        ),
        Kind::Resample => resample(image, labels, channels, height, width, geometry),
    }
}

/// Copies each `height` × `width` plane of `data` with reversed columns and/or rows.
fn mirror<T: Copy + Default>(
    data: &[T],
    height: usize,
    width: usize,
    horizontal: bool,
    vertical: bool,
) -> Vec<T> {
    let mut out = vec![T::default(); data.len()];
    if width == 0 || height == 0 {
        return out;
    }
    for (src, dst) in data
        .chunks_exact(height * width)
        .zip(out.chunks_exact_mut(height * width))
    {
        for (y, dst_row) in dst.chunks_exact_mut(width).enumerate() {
            let sy = if vertical { height - 1 - y } else { y };
            let src_row = &src[sy * width..(sy + 1) * width];
            if horizontal {
                for (d, s) in dst_row.iter_mut().zip(src_row.iter().rev()) {
                    *d = *s;
                }
            } else {
                dst_row.copy_from_slice(src_row);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_reverses_planes() {
        let data = [1, 2, 3, 4, 5, 6];
        assert_eq!(mirror(&data, 2, 3, true, false), [3, 2, 1, 6, 5, 4]);
        assert_eq!(mirror(&data, 2, 3, false, true), [4, 5, 6, 1, 2, 3]);
        assert_eq!(mirror(&data, 1, 3, true, true), [3, 2, 1, 6, 5, 4]);
    }
}
