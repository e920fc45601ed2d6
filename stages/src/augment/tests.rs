//! End-to-end properties of `augment`: labels move exactly as the image does, switched-off ops
//! change nothing, intensity ops respect their ranges, and results repeat per seed.

use ndarray::{Array2, Array3, ArrayView, Axis, Dimension, Slice};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

const SIZE: usize = 64;
const BLOCK: usize = 8;

/// Three channels: x / W, y / H and a constant 1 (after resampling: how much of the pixel came
/// from inside the source); labels number the 8×8 blocks from 1, so 0 only ever means "outside".
fn position_slice(height: usize, width: usize) -> (Array3<f32>, Array2<u8>) {
    let image = Array3::from_shape_fn((3, height, width), |(c, y, x)| match c {
        0 => x as f32 / width as f32,
        1 => y as f32 / height as f32,
        _ => 1.0,
    });
    let labels = Array2::from_shape_fn((height, width), |(y, x)| block(x, y, width));
    (image, labels)
}

fn block(x: usize, y: usize, width: usize) -> u8 {
    (1 + (y / BLOCK) * width.div_ceil(BLOCK) + x / BLOCK) as u8
}

/// A smooth slice with intensities in [0, 1] and four classes.
fn ct_slice(size: usize, seed: u64) -> (Array3<f32>, Array2<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (a, b) = (rng.next_u64() % 7, rng.next_u64() % 5);
    let image = Array3::from_shape_fn((1, size, size), |(_, y, x)| {
        let (u, v) = (x as f32 / size as f32 - 0.5, y as f32 / size as f32 - 0.5);
        (0.5 + 0.4 * (u * (3 + a) as f32).sin() * (v * (2 + b) as f32).cos()).clamp(0.0, 1.0)
    });
    let labels = Array2::from_shape_fn((size, size), |(y, x)| ((x / 9 + y / 13) % 4) as u8);
    (image, labels)
}

fn geometry_only() -> AugmentConfig {
    let mut config = AugmentConfig::default().all_off();
    config.rotation.p = 1.0;
    config.crop_scale.p = 1.0;
    config.flip_horizontal.p = 1.0;
    config.flip_vertical.p = 1.0;
    config.elastic.p = 1.0;
    // Stronger than the default so that the elastic test deforms a 64 px image visibly.
    config.elastic.alpha = 150.0;
    config.elastic.sigma = 6.0;
    config
}

/// Every output pixel whose source lies fully inside the slice must carry the label of the pixel
/// nearest to that source, which the position channels spell out; labels are 0 exactly where the
/// nearest source pixel is outside. Returns how many pixels were checked against a position.
fn assert_aligned(config: &AugmentConfig, seed: u64) -> usize {
    let (image, labels) = position_slice(SIZE, SIZE);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (out, out_labels) = augment(image.view(), labels.view(), config, &mut rng);
    let mut checked = 0;
    for ((y, x), &label) in out_labels.indexed_iter() {
        let coverage = out[[2, y, x]];
        if label == 0 {
            assert!(
                coverage < 1.0 - 1e-6,
                "label 0 inside the slice at ({x}, {y})"
            );
            continue;
        }
        if coverage < 1.0 - 1e-5 {
            continue; // Bilinear mixed in the zero outside: the position is not readable.
        }
        let sx = f64::from(out[[0, y, x]]) * SIZE as f64;
        let sy = f64::from(out[[1, y, x]]) * SIZE as f64;
        // Nearest neighbour may go either way only where the source sits half-way.
        let candidates = |v: f64| {
            let near = (v + 0.5).floor();
            if ((v - v.floor()) - 0.5).abs() < 1e-3 {
                vec![v.floor(), v.ceil()]
            } else {
                vec![near]
            }
        };
        let expected: Vec<u8> = candidates(sx)
            .iter()
            .flat_map(|&cx| candidates(sy).into_iter().map(move |cy| (cx, cy)))
            .filter(|&(cx, cy)| {
                (0.0..SIZE as f64).contains(&cx) && (0.0..SIZE as f64).contains(&cy)
            })
            .map(|(cx, cy)| block(cx as usize, cy as usize, SIZE))
            .collect();
        assert!(
            expected.contains(&label),
            "seed {seed}: pixel ({x}, {y}) samples ({sx:.3}, {sy:.3}) but has label {label}, \
             expected one of {expected:?}"
        );
        checked += 1;
    }
    checked
}

#[test]
fn labels_move_with_the_image_for_each_geometric_op_and_all_together() {
    let all = geometry_only();
    let alone = |edit: fn(&mut AugmentConfig)| {
        let mut config = all.all_off();
        edit(&mut config);
        config
    };
    let cases = [
        ("all", all.clone()),
        ("rotation", alone(|c| c.rotation.p = 1.0)),
        ("crop_scale", alone(|c| c.crop_scale.p = 1.0)),
        ("flip_horizontal", alone(|c| c.flip_horizontal.p = 1.0)),
        ("flip_vertical", alone(|c| c.flip_vertical.p = 1.0)),
        ("elastic", alone(|c| c.elastic.p = 1.0)),
    ];
    for (name, config) in cases {
        for seed in 0..12 {
            let checked = assert_aligned(&config, seed);
            // Zooming out by 1/0.7 still leaves about half of the pixels inside the source.
            assert!(
                checked > SIZE * SIZE / 3,
                "{name}: only {checked} pixels checked"
            );
        }
    }
}

#[test]
fn geometric_ops_actually_move_pixels() {
    let (image, labels) = position_slice(SIZE, SIZE);
    let all = geometry_only();
    for edit in [
        |c: &mut AugmentConfig| c.rotation.p = 1.0,
        |c: &mut AugmentConfig| c.crop_scale.p = 1.0,
        |c: &mut AugmentConfig| c.elastic.p = 1.0,
    ] {
        let mut config = all.all_off();
        edit(&mut config);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (out, out_labels) = augment(image.view(), labels.view(), &config, &mut rng);
        let moved = out
            .index_axis(Axis(0), 0)
            .iter()
            .zip(image.index_axis(Axis(0), 0))
            .filter(|(a, b)| (*a - *b).abs() > 0.5 / SIZE as f32)
            .count();
        assert!(moved > SIZE * SIZE / 4, "only {moved} pixels moved");
        assert_ne!(out_labels, labels);
    }
}

/// ndarray's own reversal of the given axes.
fn reversed<'a, T, D: Dimension>(
    mut view: ArrayView<'a, T, D>,
    axes: &[usize],
) -> ArrayView<'a, T, D> {
    for &axis in axes {
        view.invert_axis(Axis(axis));
    }
    view
}

#[test]
fn flips_are_exact_reversals() {
    let (image, labels) = ct_slice(SIZE, 3);
    let mut config = AugmentConfig::default().all_off();
    config.flip_horizontal.p = 1.0;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (out, out_labels) = augment(image.view(), labels.view(), &config, &mut rng);
    assert_eq!(out, reversed(image.view(), &[2]));
    assert_eq!(out_labels, reversed(labels.view(), &[1]));

    config.flip_vertical.p = 1.0;
    let (out, out_labels) = augment(image.view(), labels.view(), &config, &mut rng);
    assert_eq!(out, reversed(image.view(), &[1, 2]));
    assert_eq!(out_labels, reversed(labels.view(), &[0, 1]));
}

#[test]
fn switched_off_ops_change_nothing() {
    let (image, labels) = ct_slice(SIZE, 4);
    let off = AugmentConfig::default().all_off();
    // Every op at p = 0, and a rotation by exactly 0°, which goes through the resampling path,
    // both return the input bit for bit.
    let mut zero_angle = off.clone();
    zero_angle.rotation = Rotation {
        p: 1.0,
        max_degrees: 0.0,
    };
    for config in [&off, &zero_angle] {
        for seed in 0..5 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (out, out_labels) = augment(image.view(), labels.view(), config, &mut rng);
            assert_eq!(out, image);
            assert_eq!(out_labels, labels);
        }
    }
    // At p = 0 the rotation's range is irrelevant: nothing else changes with it.
    for seed in 0..5 {
        let run = |max_degrees| {
            let config = AugmentConfig {
                rotation: Rotation {
                    p: 0.0,
                    max_degrees,
                },
                ..AugmentConfig::default()
            };
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            augment(image.view(), labels.view(), &config, &mut rng)
        };
        assert_eq!(run(180.0), run(0.0));
    }
}

#[test]
fn intensity_ops_keep_the_unit_range_and_leave_labels_alone() {
    let (image, labels) = ct_slice(SIZE, 5);
    let mut config = AugmentConfig::default().all_on();
    for field in [
        &mut config.rotation.p,
        &mut config.crop_scale.p,
        &mut config.flip_horizontal.p,
        &mut config.flip_vertical.p,
        &mut config.elastic.p,
    ] {
        *field = 0.0;
    }
    config.brightness.range = [1.5, 2.0];
    config.noise.sigma = [0.2, 0.3];
    for seed in 0..10 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (out, out_labels) = augment(image.view(), labels.view(), &config, &mut rng);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_ne!(out, image);
        assert_eq!(out_labels, labels);
    }
}

#[test]
fn gamma_honours_its_range() {
    let (image, labels) = ct_slice(SIZE, 6);
    let mut config = AugmentConfig::default().all_off();
    config.gamma = Gamma {
        p: 1.0,
        range: [0.8, 0.9],
    };
    for seed in 0..10 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (out, _) = augment(image.view(), labels.view(), &config, &mut rng);
        let exponents: Vec<f64> = image
            .iter()
            .zip(&out)
            .filter(|&(&v, _)| (0.05..0.95).contains(&v))
            .map(|(&v, &o)| f64::from(o).ln() / f64::from(v).ln())
            .collect();
        assert!(exponents.len() > 1000);
        let (lo, hi) = exponents
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &e| (lo.min(e), hi.max(e)));
        // One exponent per slice, inside the range.
        assert!(
            hi - lo < 1e-3 && lo > 0.8 - 1e-3 && hi < 0.9 + 1e-3,
            "{lo}…{hi}"
        );
    }
}

#[test]
fn same_seed_same_bytes_and_different_seeds_differ() {
    let (image, labels) = ct_slice(SIZE, 7);
    for config in [AugmentConfig::default(), AugmentConfig::default().all_on()] {
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            augment(image.view(), labels.view(), &config, &mut rng)
        };
        let (a, b) = (run(11), run(11));
        let bits = |x: &Array3<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.0), bits(&b.0));
        assert_eq!(a.1, b.1);
        let differs = (12..20).any(|seed| run(seed) != a);
        assert!(differs);
        if config.rotation.p == 1.0 {
            assert_ne!(run(12).0, a.0);
        }
    }
}

#[test]
fn generator_advances_the_same_whatever_fires() {
    let (image, labels) = ct_slice(32, 8);
    let configs = [
        AugmentConfig::default(),
        AugmentConfig::default().all_on(),
        AugmentConfig::default().all_off(),
    ];
    let next: Vec<u64> = configs
        .iter()
        .map(|config| {
            let mut rng = ChaCha8Rng::seed_from_u64(21);
            augment(image.view(), labels.view(), config, &mut rng);
            rng.next_u64()
        })
        .collect();
    assert!(next.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn strided_views_give_the_same_result_as_contiguous_arrays() {
    let (image, labels) = ct_slice(SIZE, 9);
    let (wide_image, wide_labels) = {
        let mut i = Array3::zeros((1, SIZE, 2 * SIZE));
        let mut l = Array2::zeros((SIZE, 2 * SIZE));
        let every_other = Slice::new(0, None, 2);
        i.slice_axis_mut(Axis(2), every_other).assign(&image);
        l.slice_axis_mut(Axis(1), every_other).assign(&labels);
        (i, l)
    };
    let config = AugmentConfig::default().all_on();
    let mut a = ChaCha8Rng::seed_from_u64(2);
    let mut b = ChaCha8Rng::seed_from_u64(2);
    let contiguous = augment(image.view(), labels.view(), &config, &mut a);
    let strided = augment(
        wide_image.slice_axis(Axis(2), Slice::new(0, None, 2)),
        wide_labels.slice_axis(Axis(1), Slice::new(0, None, 2)),
        &config,
        &mut b,
    );
    assert_eq!(contiguous, strided);
}

#[test]
fn labels_are_opaque_categories() {
    let (image, _) = ct_slice(SIZE, 10);
    let labels = Array2::from_shape_fn((SIZE, SIZE), |(y, x)| [7u8, 200, 255][(x / 5 + y / 3) % 3]);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (_, out) = augment(image.view(), labels.view(), &geometry_only(), &mut rng);
    assert!(out.iter().all(|v| [0, 7, 200, 255].contains(v)));
}

#[test]
fn odd_shapes_and_empty_slices_work() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let config = AugmentConfig::default().all_on();
    for (c, h, w) in [(2, 5, 70), (1, 1, 1), (1, 0, 8)] {
        let image = Array3::from_elem((c, h, w), 0.5f32);
        let labels = Array2::from_elem((h, w), 1u8);
        let (out, out_labels) = augment(image.view(), labels.view(), &config, &mut rng);
        assert_eq!(out.dim(), (c, h, w));
        assert_eq!(out_labels.dim(), (h, w));
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

#[test]
#[should_panic(expected = "labels must have the image's height and width")]
fn mismatched_labels_panic() {
    let image = Array3::<f32>::zeros((1, 8, 8));
    let labels = Array2::<u8>::zeros((8, 9));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    augment(
        image.view(),
        labels.view(),
        &AugmentConfig::default(),
        &mut rng,
    );
}
