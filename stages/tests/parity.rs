//! Parity of the Burn networks with the PyTorch reference fixtures in `../shared/fixtures`:
//! every stored activation must agree within 1e-4 · max|reference| (fixtures/README.md).

use std::path::{Path, PathBuf};

use burn::store::{ModuleStore, SafetensorsStore, bridge};
use burn::tensor::{Device, Tensor, TensorData};
use covseg_stages::Error;
use covseg_stages::model::{
    EfficientNetConfig, EfficientNetVariant, EncoderKind, Flavour, STAGE_LAST_BLOCKS,
    StateDictLayout, UnetConfig,
};
use covseg_stages::training::{DeviceChoice, select_device};

/// The tolerance of fixtures/README.md: 15–100x the measured float32 rounding noise, and 10x
/// below the smallest error any real bug (padding, eps, skip index) produced.
const RELATIVE_TOLERANCE: f32 = 1e-4;

/// The tolerance in force: [`RELATIVE_TOLERANCE`], or `COVSEG_PARITY_TOLERANCE` (bench/gpu.sh
/// runs these fixtures on a GPU at 1e-3).
fn tolerance() -> f32 {
    std::env::var("COVSEG_PARITY_TOLERANCE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RELATIVE_TOLERANCE)
}

/// The device the fixtures run on: flex, or the GPU `COVSEG_PARITY_DEVICE` names (`wgpu` or
/// `cuda`, in a build with that feature; bench/gpu.sh). A GPU that does not answer fails the test
/// rather than falling back to the CPU.
fn device() -> Device {
    let name = match std::env::var("COVSEG_PARITY_DEVICE") {
        Ok(name) if name != "cpu" => name,
        _ => return Device::flex(),
    };
    let choice: DeviceChoice = serde_json::from_value(serde_json::Value::String(name.clone()))
        .unwrap_or_else(|e| panic!("COVSEG_PARITY_DEVICE={name}: {e}"));
    let selected =
        select_device(choice).unwrap_or_else(|e| panic!("COVSEG_PARITY_DEVICE={name}: {e}"));
    assert!(
        selected.gpu,
        "COVSEG_PARITY_DEVICE={name} resolved to {}",
        selected.name
    );
    selected.device
}

/// The fixtures folder. Tests that call this are ignored (visibly) when `../shared` was absent at
/// build time, and run under `CI=true` always: a missing folder then fails, naming it.
fn fixtures(test: &str) -> Option<PathBuf> {
    let shared = std::env::var_os("COVSEG_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")));
    let dir = shared.join("fixtures");
    assert!(
        dir.is_dir(),
        "{test}: no reference fixtures at {} (set COVSEG_SHARED to the shared folder)",
        dir.display()
    );
    Some(dir)
}

/// The tensors of one parity file.
struct Reference {
    path: PathBuf,
    store: SafetensorsStore,
}

impl Reference {
    fn open(path: PathBuf) -> Self {
        let store = SafetensorsStore::from_file(&path);
        Self { path, store }
    }

    fn data(&mut self, name: &str) -> TensorData {
        let tensor = self
            .store
            .get_tensor(name)
            .unwrap_or_else(|e| panic!("{}: {e}", self.path.display()))
            .unwrap_or_else(|| panic!("{}: no tensor {name}", self.path.display()));
        bridge::to_data(tensor).unwrap_or_else(|e| panic!("{name}: {e:?}"))
    }

    fn input(&mut self, name: &str, device: &Device) -> Tensor<4> {
        Tensor::from_data(self.data(name), device)
    }
}

/// Collects every comparison of a test, so one run names every tensor that is off.
#[derive(Default)]
struct Parity {
    rows: Vec<(String, f32)>,
}

impl Parity {
    fn check<const D: usize>(&mut self, reference: &mut Reference, name: &str, out: &Tensor<D>) {
        let expected = reference.data(name);
        let actual = out.to_data();
        assert_eq!(
            actual.shape(),
            expected.shape(),
            "{name}: shape of the Burn output vs the reference"
        );
        let expected: Vec<f32> = expected.iter::<f32>().collect();
        let actual: Vec<f32> = actual.iter::<f32>().collect();
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        // `f32::max` drops NaN, so a NaN output is carried through explicitly.
        let diff = expected.iter().zip(&actual).fold(0f32, |m, (e, a)| {
            let d = (e - a).abs();
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        });
        self.rows
            .push((name.to_string(), diff / scale.max(f32::MIN_POSITIVE)));
    }

    /// Prints the table and fails naming every tensor out of tolerance.
    fn finish(self, fixture: &str) -> f32 {
        let worst = self.rows.iter().fold(0f32, |m, (_, r)| m.max(*r));
        eprintln!(
            "{fixture}: {} tensors, worst max|out-ref|/max|ref| = {worst:.2e}",
            self.rows.len()
        );
        for (name, rel) in &self.rows {
            eprintln!("  {name:<20} {rel:.2e}");
        }
        let failed: Vec<String> = self
            .rows
            .iter()
            .filter(|(_, rel)| rel.is_nan() || *rel > tolerance())
            .map(|(name, rel)| format!("{name} ({rel:.2e})"))
            .collect();
        assert!(
            failed.is_empty(),
            "{fixture}: out of tolerance {:e}: {}",
            tolerance(),
            failed.join(", ")
        );
        worst
    }
}

fn argmax(logits: &Tensor<2>) -> usize {
    let values: Vec<f32> = logits.to_data().iter::<f32>().collect();
    (0..values.len())
        .max_by(|&a, &b| values[a].total_cmp(&values[b]))
        .unwrap_or(0)
}

#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when this crate was built (touch stages/prerequisites.rs after adding it)"
)]
fn torchvision_efficientnet_b0_matches_pytorch() {
    let Some(fixtures) = fixtures("torchvision_efficientnet_b0_matches_pytorch") else {
        return;
    };
    let dir = fixtures.join("torchvision_effb0");
    let device = device();
    let model = EfficientNetConfig::new(EfficientNetVariant::B0, Flavour::Torchvision)
        .init_classifier(1000, &device)
        .load_pytorch(
            dir.join("effb0_random.safetensors"),
            StateDictLayout::Torchvision,
        )
        .expect("load torchvision weights");
    let mut reference = Reference::open(dir.join("effb0_parity.safetensors"));
    let trace = model.trace(reference.input("input", &device));

    let mut parity = Parity::default();
    parity.check(&mut reference, "stage0", &trace.stem);
    for (stage, &last) in STAGE_LAST_BLOCKS.iter().enumerate() {
        parity.check(
            &mut reference,
            &format!("stage{}", stage + 1),
            &trace.blocks[last],
        );
    }
    parity.check(&mut reference, "stage8", &trace.head);
    parity.check(&mut reference, "features", &trace.head);
    parity.check(&mut reference, "pooled", &trace.pooled);
    parity.check(&mut reference, "logits", &trace.logits);
    parity.finish("torchvision efficientnet_b0");
}

fn smp_unet_config() -> UnetConfig {
    UnetConfig {
        in_channels: 1,
        classes: 2,
        ..UnetConfig::default()
    }
}

#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when this crate was built (touch stages/prerequisites.rs after adding it)"
)]
fn smp_unet_efficientnet_b0_matches_pytorch() {
    let Some(fixtures) = fixtures("smp_unet_efficientnet_b0_matches_pytorch") else {
        return;
    };
    let dir = fixtures.join("smp_unet_effb0");
    let device = device();
    let model = smp_unet_config()
        .init(&device)
        .expect("valid config")
        .load_smp(dir.join("smp_unet_effb0_random.safetensors"))
        .expect("load SMP weights");

    let mut parity = Parity::default();
    let mut reference = Reference::open(dir.join("smp_unet_effb0_parity.safetensors"));
    let input = reference.input("input", &device);
    let trace = model.trace(input.clone());
    for (i, feature) in trace.features.iter().enumerate() {
        parity.check(&mut reference, &format!("enc_feat{i}"), feature);
    }
    parity.check(&mut reference, "logits", &trace.logits);

    // The per-block tensors, to say where a mismatch starts.
    let mut extra = Reference::open(dir.join("smp_unet_effb0_parity_extra.safetensors"));
    let covseg_stages::model::Encoder::EfficientNet(encoder) = &model.encoder else {
        panic!("an EfficientNet encoder")
    };
    let (stem, blocks) = encoder.forward_blocks(input);
    parity.check(&mut extra, "enc_stem", &stem);
    for (i, block) in blocks.iter().enumerate() {
        parity.check(&mut extra, &format!("enc_block{i}"), block);
    }
    for (i, block) in trace.decoder.iter().enumerate() {
        parity.check(&mut extra, &format!("dec_block{i}"), block);
    }
    parity.check(&mut extra, "decoder_out", &trace.decoder[4]);
    parity.check(&mut extra, "logits", &trace.logits);
    parity.finish("SMP Unet(efficientnet-b0)");
}

/// The tolerance tells the flavours apart: SMP's weights in a torchvision-flavoured network
/// (symmetric padding, BN eps 1e-5) miss the stem by far more than 1e-4.
#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when this crate was built (touch stages/prerequisites.rs after adding it)"
)]
fn wrong_flavour_is_far_out_of_tolerance() {
    let Some(fixtures) = fixtures("wrong_flavour_is_far_out_of_tolerance") else {
        return;
    };
    let dir = fixtures.join("smp_unet_effb0");
    let device = device();
    let config = UnetConfig {
        flavour: Flavour::Torchvision,
        ..smp_unet_config()
    };
    let model = config
        .init(&device)
        .expect("valid config")
        .load_smp(dir.join("smp_unet_effb0_random.safetensors"))
        .expect("load SMP weights");
    let mut reference = Reference::open(dir.join("smp_unet_effb0_parity.safetensors"));
    let features = model.features(reference.input("input", &device));
    let mut parity = Parity::default();
    parity.check(&mut reference, "enc_feat1", &features[1]);
    let (_, relative) = &parity.rows[0];
    assert!(*relative > 1e-2, "stem off by only {relative:e}");
}

#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when this crate was built (touch stages/prerequisites.rs after adding it)"
)]
fn efficientnet_lite0_matches_the_tf_faithful_reference() {
    let Some(fixtures) = fixtures("efficientnet_lite0_matches_the_tf_faithful_reference") else {
        return;
    };
    let dir = fixtures.join("effnet_lite0");
    let device = device();
    let model = EfficientNetConfig::new(EfficientNetVariant::Lite0, Flavour::Tf)
        .init_classifier(1000, &device)
        .load_pytorch(dir.join("weights.safetensors"), StateDictLayout::Lukemelas)
        .expect("load Lite0 weights");
    let mut reference = Reference::open(dir.join("parity.safetensors"));

    let mut parity = Parity::default();
    // x224 is the cat photo; x64x96 is non-square; x77x101 gives stride-2 layers odd sizes.
    for prefix in ["x224", "x64x96", "x77x101"] {
        let trace = model.trace(reference.input(&format!("{prefix}_input"), &device));
        parity.check(&mut reference, &format!("{prefix}_stem"), &trace.stem);
        for (stage, &last) in STAGE_LAST_BLOCKS.iter().enumerate() {
            let name = format!("{prefix}_stage{}", stage + 1);
            parity.check(&mut reference, &name, &trace.blocks[last]);
        }
        if prefix != "x224" {
            for (i, block) in trace.blocks.iter().enumerate() {
                parity.check(&mut reference, &format!("{prefix}_block{i}"), block);
            }
        }
        parity.check(&mut reference, &format!("{prefix}_head"), &trace.head);
        parity.check(&mut reference, &format!("{prefix}_pooled"), &trace.pooled);
        parity.check(&mut reference, &format!("{prefix}_logits"), &trace.logits);
        if prefix == "x224" {
            assert_eq!(
                argmax(&trace.logits),
                282,
                "the cat photo is a tiger cat (282)"
            );
        }
    }
    parity.finish("EfficientNet-Lite0");
}

/// A U-Net takes its encoder from the torchvision classifier checkpoint: its features at 1/2, 1/4,
/// 1/8 and 1/32 are torchvision's stage outputs (1/16 is block 8, which torchvision does not store).
#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when this crate was built (touch stages/prerequisites.rs after adding it)"
)]
fn unet_encoder_from_torchvision_checkpoint_matches_pytorch() {
    let Some(fixtures) = fixtures("unet_encoder_from_torchvision_checkpoint_matches_pytorch")
    else {
        return;
    };
    let dir = fixtures.join("torchvision_effb0");
    let device = device();
    let config = UnetConfig {
        flavour: Flavour::Torchvision,
        in_channels: 3,
        ..UnetConfig::default()
    };
    let model = config
        .init(&device)
        .expect("valid config")
        .load_encoder(
            dir.join("effb0_random.safetensors"),
            StateDictLayout::Torchvision,
        )
        .expect("load torchvision encoder");
    let mut reference = Reference::open(dir.join("effb0_parity.safetensors"));
    let features = model.features(reference.input("input", &device));
    let mut parity = Parity::default();
    for (feature, stage) in [(1, "stage0"), (2, "stage2"), (3, "stage3"), (5, "stage7")] {
        parity.check(&mut reference, stage, &features[feature]);
    }
    parity.finish("U-Net encoder from torchvision efficientnet_b0");
}

/// A U-Net takes its encoder from the Lite0 ImageNet checkpoint: its features are the stem and
/// the ends of stages 2, 3, 5 and 7, on the non-square 64x96 input.
#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when this crate was built (touch stages/prerequisites.rs after adding it)"
)]
fn unet_encoder_from_lite0_checkpoint_matches_the_reference() {
    let Some(fixtures) = fixtures("unet_encoder_from_lite0_checkpoint_matches_the_reference")
    else {
        return;
    };
    let dir = fixtures.join("effnet_lite0");
    let device = device();
    let config = UnetConfig {
        encoder: EncoderKind::EfficientNetLite0,
        in_channels: 3,
        ..UnetConfig::default()
    };
    let model = config
        .init(&device)
        .expect("valid config")
        .load_encoder(dir.join("weights.safetensors"), StateDictLayout::Lukemelas)
        .expect("load Lite0 encoder");
    let mut reference = Reference::open(dir.join("parity.safetensors"));
    let trace = model.trace(reference.input("x64x96_input", &device));
    let mut parity = Parity::default();
    let stages = ["stem", "stage2", "stage3", "stage5", "stage7"];
    for (feature, stage) in trace.features[1..].iter().zip(stages) {
        parity.check(&mut reference, &format!("x64x96_{stage}"), feature);
    }
    assert_eq!(trace.logits.dims(), [1, 2, 64, 96]);
    parity.finish("U-Net encoder from the Lite0 checkpoint");
}

/// A one-channel network loaded from RGB weights must see a grey image exactly as the RGB
/// network sees that image replicated on three channels.
#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when this crate was built (touch stages/prerequisites.rs after adding it)"
)]
fn grey_stem_equals_replicated_rgb_input() {
    let Some(fixtures) = fixtures("grey_stem_equals_replicated_rgb_input") else {
        return;
    };
    let weights = fixtures.join("torchvision_effb0/effb0_random.safetensors");
    let device = device();
    let load = |in_channels: usize| {
        EfficientNetConfig {
            in_channels,
            ..EfficientNetConfig::new(EfficientNetVariant::B0, Flavour::Torchvision)
        }
        .init_classifier(1000, &device)
        .load_pytorch(&weights, StateDictLayout::Torchvision)
        .expect("load torchvision weights")
    };
    let (grey_model, rgb_model) = (load(1), load(3));
    let mut reference =
        Reference::open(fixtures.join("torchvision_effb0/effb0_parity.safetensors"));
    let grey = reference.input("input", &device).narrow(1, 0, 1);
    let rgb = Tensor::cat(vec![grey.clone(), grey.clone(), grey.clone()], 1);
    let from_grey = grey_model.trace(grey).head;
    let from_rgb = rgb_model.trace(rgb).head;
    let scale: f32 = from_rgb.clone().abs().max().into_scalar();
    let diff: f32 = (from_grey - from_rgb).abs().max().into_scalar();
    assert!(
        diff <= tolerance() * scale,
        "max diff {diff} vs max {scale}"
    );
}

#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when this crate was built (touch stages/prerequisites.rs after adding it)"
)]
fn loading_reports_the_tensor_and_shapes_that_do_not_fit() {
    let Some(fixtures) = fixtures("loading_reports_the_tensor_and_shapes_that_do_not_fit") else {
        return;
    };
    let weights = fixtures.join("smp_unet_effb0/smp_unet_effb0_random.safetensors");
    let device = device();
    let four_classes = UnetConfig {
        classes: 4,
        ..smp_unet_config()
    };
    let error = four_classes
        .init(&device)
        .expect("valid config")
        .load_smp(&weights)
        .expect_err("2-class weights into a 4-class head");
    match error {
        Error::WeightShape {
            tensor,
            expected,
            found,
            ..
        } => {
            assert!(tensor.starts_with("head."), "{tensor}");
            assert_eq!(expected[0], 4);
            assert_eq!(found[0], 2);
        }
        other => panic!("expected a shape error, got {other}"),
    }

    // torchvision names read as lukemelas ones match nothing.
    let error = EfficientNetConfig::new(EfficientNetVariant::B0, Flavour::Tf)
        .init_classifier(1000, &device)
        .load_pytorch(
            fixtures.join("torchvision_effb0/effb0_random.safetensors"),
            StateDictLayout::Lukemelas,
        )
        .expect_err("wrong layout");
    assert!(matches!(error, Error::Weights { .. }), "{error}");
    assert!(error.to_string().contains("not found"), "{error}");
}

#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when this crate was built (touch stages/prerequisites.rs after adding it)"
)]
fn missing_weights_file_is_an_io_error() {
    let device = device();
    let error = smp_unet_config()
        .init(&device)
        .expect("valid config")
        .load_smp(Path::new("/nonexistent/weights.safetensors"))
        .expect_err("no file");
    assert!(matches!(error, Error::Io { .. }), "{error}");
}

/// On a GPU build: the B0 U-Net's output and the gradients of its input, stem and head on the GPU
/// against flex, on a 2 × 1 × 128 × 128 batch in training mode, within 1e-3 of each tensor's
/// largest value (bench/gpu.sh runs it; CI never builds a GPU backend).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[test]
fn the_gpu_matches_flex_in_training() {
    use burn::module::Module;
    use burn::tensor::Distribution;

    let gpu = device();
    assert!(
        !matches!(gpu.as_dispatch(), burn::backend::DispatchDevice::Flex(_)),
        "set COVSEG_PARITY_DEVICE=wgpu (or cuda) to run this test"
    );
    let cpu = Device::flex();
    cpu.seed(3);
    let model = smp_unet_config().init(&cpu).expect("valid config");
    let input = Tensor::<4>::random([2, 1, 128, 128], Distribution::Normal(0.0, 1.0), &cpu);
    let weights = Tensor::<4>::random([2, 2, 128, 128], Distribution::Uniform(0.0, 1.0), &cpu);
    let run = |device: &Device| {
        let device = device.clone().autodiff();
        let model = model.clone().fork(&device);
        let x = Tensor::<4>::from_data(input.to_data(), &device).require_grad();
        let w = Tensor::<4>::from_data(weights.to_data(), &device);
        let y = model.forward(x.clone());
        let grads = (y.clone() * w).sum().backward();
        let covseg_stages::model::Encoder::EfficientNet(encoder) = &model.encoder else {
            panic!("an EfficientNet encoder")
        };
        let values = |t: TensorData| t.iter::<f32>().collect::<Vec<f32>>();
        [
            ("output", values(y.into_data())),
            (
                "input gradient",
                values(x.grad(&grads).expect("input grad").into_data()),
            ),
            (
                "stem weight gradient",
                values(
                    encoder
                        .stem
                        .conv
                        .weight
                        .grad(&grads)
                        .expect("stem grad")
                        .into_data(),
                ),
            ),
            (
                "head weight gradient",
                values(
                    model
                        .head
                        .weight
                        .grad(&grads)
                        .expect("head grad")
                        .into_data(),
                ),
            ),
        ]
    };
    let (reference, ours) = (run(&cpu), run(&gpu));
    for ((name, a), (_, b)) in reference.iter().zip(&ours) {
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        let worst = a
            .iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{name}: max |gpu - flex| / max |flex| = {:.2e}",
            worst / scale
        );
        assert!(
            worst <= 1e-3 * scale,
            "{name}: {:.2e} of its largest value",
            worst / scale
        );
    }
}
