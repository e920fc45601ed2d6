//! The endpoint against `predict`, on a real bundle.

use std::path::{Path, PathBuf};

use covseg_stages::predict::{PredictConfig, PredictInput, Tta};
use covseg_stages::training::{Bundle, load_bundle};

use super::*;

/// A random-weight bundle of a small plain U-Net with `pre`, at `dir`.
fn random_bundle(dir: &Path, pre: &Preprocessing, seed: u64) -> Bundle {
    use covseg_stages::model::{EncoderKind, UnetConfig};
    use covseg_stages::training::{DeviceChoice, TrainConfig, write_bundle};
    let device = burn::tensor::Device::flex();
    device.seed(seed);
    let config = TrainConfig {
        model: UnetConfig {
            encoder: EncoderKind::Plain,
            encoder_depth: 3,
            decoder_channels: Some(vec![16, 8, 8]),
            ..Default::default()
        },
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    let model = config.model.init(&device).unwrap();
    let thresholds = Thresholds {
        ggo: 0.5,
        consolidation: 0.5,
    };
    write_bundle(dir, &model, &config, pre, thresholds).unwrap();
    load_bundle(dir, &device).unwrap()
}

/// Thresholds at the median probability of each class of `p` `(N,2,S,S)`, written as the
/// bundle's `thresholds.json`, so the masks are neither empty nor full (random weights put every
/// pixel on one side of 0.5). Returns the bundle reloaded with them.
fn median_thresholds(dir: &Path, p: &Array4<f32>) -> (Bundle, Thresholds) {
    let median = |c: usize| {
        let mut v: Vec<f32> = p.index_axis(ndarray::Axis(1), c).iter().copied().collect();
        v.sort_by(f32::total_cmp);
        f64::from(v[v.len() / 2])
    };
    let thresholds = Thresholds {
        ggo: median(0),
        consolidation: median(1),
    };
    std::fs::write(
        dir.join("thresholds.json"),
        serde_json::to_string(&thresholds).unwrap(),
    )
    .unwrap();
    let bundle = load_bundle(dir, &burn::tensor::Device::flex()).unwrap();
    (bundle, thresholds)
}

/// A server whose model thread loads the bundle at `dir`.
fn serving(dir: PathBuf, preprocessing: Preprocessing, thresholds: Thresholds) -> Arc<AppState> {
    use covseg_stages::serving::segment::BundleModel;
    state_with(
        Setup::default(),
        Recipe {
            preprocessing,
            thresholds,
        },
        Box::new(move || {
            let bundle = load_bundle(&dir, &burn::tensor::Device::flex()).unwrap();
            Box::new(BundleModel {
                bundle,
                tta: Tta::None,
                max_batch: 4,
            }) as Box<dyn Model>
        }),
    )
}

/// The endpoint and `predict` give the same masks for the same slice and bundle, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_matches_predict_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let bundle_dir = dir.path().join("bundle");
    let pre = Preprocessing {
        size: 32,
        ..recipe().preprocessing
    };
    let bundle = random_bundle(&bundle_dir, &pre, 5);

    // One 40×36 slice in HU with structure, as a Kaggle .npy and as an upload.
    let slice = Array2::<f64>::from_shape_fn((40, 36), |(y, x)| {
        ((y * 37 + x * 11) % 200) as f64 * 8.0 - 1000.0
    });
    let kaggle = slice.clone().into_shape_with_order((1, 40, 36, 1)).unwrap();
    let images = dir.path().join("images.npy");
    kaggle
        .write_npy(std::fs::File::create(&images).unwrap())
        .unwrap();
    let input = covseg_stages::predict::model_input(&pre, slice.mapv(|v| v as f32));
    let p = covseg_stages::predict::probabilities(
        &bundle,
        input.insert_axis(ndarray::Axis(0)).view(),
        Tta::None,
        1,
    )
    .unwrap();
    let (bundle, thresholds) = median_thresholds(&bundle_dir, &p);
    let out = dir.path().join("predicted");
    covseg_stages::predict::predict(
        &bundle,
        &PredictInput::Kaggle(images),
        &PredictConfig {
            batch_size: 1,
            overlays: 0,
            ..Default::default()
        },
        &out,
        &covseg_stages::NoProgress,
    )
    .unwrap();
    let expected = std::fs::read(out.join("masks.npy")).unwrap();

    let state = serving(bundle_dir, pre, thresholds);
    let mut upload = Vec::new();
    slice.write_npy(&mut upload).unwrap();
    let (status, _, body) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "application/x-npy",
            upload,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let masks = ndarray::Array4::<bool>::read_npy(&body[..]).unwrap();
    assert!(
        masks.iter().any(|&m| m) && masks.iter().any(|&m| !m),
        "a degenerate prediction proves nothing"
    );
    assert_eq!(body, expected, "the endpoint's masks differ from predict's");

    // Batched with another request's slice, a slice still gets the same masks (on the CPU the
    // network computes each slice of a batch on its own).
    let other = Array2::<f64>::from_shape_fn((40, 36), |(y, x)| {
        ((y * 13 + x * 29) % 170) as f64 * 9.0 - 1000.0
    });
    let mut pair = ndarray::Array3::<f64>::zeros((2, 40, 36));
    pair.index_axis_mut(ndarray::Axis(0), 0).assign(&slice);
    pair.index_axis_mut(ndarray::Axis(0), 1).assign(&other);
    let mut upload = Vec::new();
    pair.write_npy(&mut upload).unwrap();
    let (status, _, body) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "application/x-npy",
            upload,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let batched = ndarray::Array4::<bool>::read_npy(&body[..]).unwrap();
    let alone = ndarray::Array4::<bool>::read_npy(&expected[..]).unwrap();
    assert_eq!(
        batched.index_axis(ndarray::Axis(0), 0),
        alone.index_axis(ndarray::Axis(0), 0),
        "batching changed a slice's masks"
    );
}

/// A volume gets the same label NIfTI from the endpoint as from `predict`, with a bundle that
/// resamples to its own pixel spacing (the phantom's 5.5 mm pixels onto a 7 mm, 48² canvas).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_gets_predicts_labels_from_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let paths = super::volumes::phantoms(dir.path());
    let bundle_dir = dir.path().join("bundle");
    let pre = Preprocessing {
        size: 48,
        pixel_mm: Some(7.0),
        ..recipe().preprocessing
    };
    let bundle = random_bundle(&bundle_dir, &pre, 8);
    let file = paths.nifti.join("phantom-001.nii.gz");
    let volume = covseg_stages::volume::nifti::read(&file).unwrap();
    let slices = covseg_stages::predict::VolumeSlices::new(&pre, &volume);
    let p = covseg_stages::predict::probabilities(
        &bundle,
        slices.inputs(0..slices.len()).view(),
        Tta::None,
        4,
    )
    .unwrap();
    let (bundle, thresholds) = median_thresholds(&bundle_dir, &p);
    let out = dir.path().join("predicted");
    covseg_stages::predict::predict(
        &bundle,
        &PredictInput::Volumes(file.clone()),
        &PredictConfig {
            overlays: 0,
            ..Default::default()
        },
        &out,
        &covseg_stages::NoProgress,
    )
    .unwrap();
    let expected = covseg_stages::volume::nifti::read(&out.join("phantom-001.nii.gz")).unwrap();
    assert!(
        expected.hu.iter().any(|&v| v == 1.0 || v == 2.0),
        "a prediction without lesions proves little"
    );

    let state = serving(bundle_dir, pre, thresholds);
    let (status, _, nii) = send(
        &state,
        post(
            "/v1/volume?name=phantom-001",
            "application/gzip",
            "application/gzip",
            std::fs::read(&file).unwrap(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&nii));
    let served = super::volumes::labels_of(&nii);
    super::volumes::assert_aligned(&served, &volume);
    assert_eq!(
        served.hu, expected.hu,
        "the endpoint's labels differ from predict's"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("phantom-001.report.json")).unwrap())
            .unwrap();
    let (_, _, body) = send(
        &state,
        post(
            "/v1/volume?name=phantom-001",
            "application/gzip",
            "application/json",
            std::fs::read(&file).unwrap(),
        ),
    )
    .await;
    assert_eq!(json(&body)["report"], report);
}
