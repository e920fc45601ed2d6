//! Data augmentation of CT slices and their label maps for training: geometry moves image and
//! labels together in one resampling, then intensity ops change the image alone.

mod blur;
mod clahe;
mod config;
mod elastic;
mod fast_math;
mod intensity;
mod plan;
mod resample;
mod spatial;
#[cfg(test)]
mod tests;
mod warp;

use std::borrow::Cow;

use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use rand_chacha::ChaCha8Rng;

pub use clahe::clahe;
pub use config::{
    AugmentConfig, Blur, Brightness, Clahe, Contrast, CropScale, Elastic, Flip, Gamma, Noise,
    Rotation,
};

/// Augments one slice. `image` is `(C, H, W)` intensities in [0, 1] (windowed CT, one window per
/// channel); `labels` is the `(H, W)` class map, treated as opaque categories. Returns both in the
/// same shapes: geometry moves every channel and the labels identically (image bilinear, labels
/// nearest neighbour, 0 for both where the source lies outside the slice); intensity ops touch
/// only the image and keep it in [0, 1]. `config` is expected to be valid
/// ([`AugmentConfig::validate`]).
///
/// The ops run in a fixed order: the geometric ones (rotation, crop/scale, horizontal and vertical
/// flip, elastic) composed into one coordinate map and resampled once, then CLAHE, noise, blur,
/// brightness, contrast and gamma.
///
/// Randomness is drawn in a fixed order too: first a "fires?" draw for every op, then every op's
/// parameters, whether it fires or not; elastic and noise draw their bulk numbers from generators
/// of their own, seeded from that sequence. So the output depends only on the inputs and the
/// state of `rng`; changing one op's probability changes no other op's draws; and `rng` advances
/// by the same amount whatever fires, so slices augmented in sequence from one generator stay
/// reproducible when a probability changes.
///
/// # Panics
///
/// When `labels` is not `(H, W)` of `image`.
pub fn augment(
    image: ArrayView3<f32>,
    labels: ArrayView2<u8>,
    config: &AugmentConfig,
    rng: &mut ChaCha8Rng,
) -> (Array3<f32>, Array2<u8>) {
    let (channels, height, width) = image.dim();
    assert_eq!(
        labels.dim(),
        (height, width),
        "labels must have the image's height and width"
    );
    let plan = plan::draw(config, rng);

    let geometry = spatial::Geometry::new(&plan, config, height, width);
    let (mut out, out_labels) = warp::warp(
        &contiguous(image.as_slice(), image.iter()),
        &contiguous(labels.as_slice(), labels.iter()),
        channels,
        height,
        width,
        &geometry,
    );

    let plane = height * width;
    if plane > 0 {
        for (index, channel) in out.chunks_exact_mut(plane).enumerate() {
            if let Some(clip) = plan.clahe {
                clahe::equalise(channel, height, width, clip, config.clahe.tiles);
            }
            if let Some((sigma, seed)) = plan.noise {
                // A stream per channel, so channels get independent noise whatever C is.
                intensity::noise(channel, sigma, seed, index as u64);
            }
            if let Some(sigma) = plan.blur {
                blur::blur(channel, height, width, sigma);
            }
            if let Some(factor) = plan.brightness {
                intensity::brightness(channel, factor);
            }
            if let Some(factor) = plan.contrast {
                intensity::contrast(channel, factor);
            }
            if let Some(gamma) = plan.gamma {
                intensity::gamma(channel, gamma);
            }
        }
    }

    let image = Array3::from_shape_vec((channels, height, width), out)
        .expect("the warp returns C × H × W values");
    let labels =
        Array2::from_shape_vec((height, width), out_labels).expect("the warp returns H × W labels");
    (image, labels)
}

/// The view's elements in row-major order, borrowed when its memory already is.
fn contiguous<'a, T: Copy + 'a>(
    slice: Option<&'a [T]>,
    elements: impl Iterator<Item = &'a T>,
) -> Cow<'a, [T]> {
    match slice {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(elements.copied().collect()),
    }
}
