//! The train stage through the real binary: a tiny run writes the bundle, metrics and curve, and
//! a second run is all cache hits.

use crate::test::Test;

/// Phantoms → split → augment → a two-epoch plain U-Net; other tests append stages to it.
pub const PIPELINE: &str = r#"
[pipeline]
name = "train-tiny"
seed = 3

[[stage]]
name = "phantoms"
kind = "synth"
params = { slices = 12, size = 64 }

[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "@phantoms.images", medseg_masks = "@phantoms.masks" }
params = { folds = 1, val_fraction = 0.25 }

[[stage]]
name = "augment"
kind = "augment-cache"
inputs = { images = "@split.train_images", labels = "@split.train_labels" }
params = { copies = 1 }

[[stage]]
name = "train"
kind = "train"
inputs = { shards = "@augment.shards", val_images = "@split.val_images", val_labels = "@split.val_labels", preprocessing = "@split.preprocessing" }
params = { epochs = 2, batch_size = 4, device = "cpu", model = { encoder = "plain", encoder_depth = 3, decoder_channels = [32, 16, 8] } }
"#;

#[test]
fn tiny_training_writes_bundle_metrics_and_curve_then_is_cached() {
    let mut t = Test::new().pipeline(PIPELINE).args(["run"]);
    t.run();
    assert!(t.last_outcomes().iter().all(|(_, o)| o == "ran"));
    for file in [
        "bundle/weights.safetensors",
        "bundle/config.json",
        "bundle/preprocessing.json",
        "bundle/thresholds.json",
    ] {
        assert!(t.output("train", file).is_file(), "{file}");
    }
    let metrics = std::fs::read_to_string(t.output("train", "metrics.jsonl")).unwrap();
    let epochs: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(epochs.len(), 2);
    for key in ["train_loss", "val_loss", "val_score", "lr", "seconds"] {
        assert!(epochs[1][key].is_number(), "{key} in {}", epochs[1]);
    }
    assert!(epochs[1]["val_f1"]["consolidation"].is_number());
    let curve = std::fs::read(t.output("train", "curve.png")).unwrap();
    assert_eq!(&curve[1..4], b"PNG");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("train", "bundle/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model"]["encoder"], "plain");

    t.then(["run"]).go();
    assert!(t.last_outcomes().iter().all(|(_, o)| o == "hit"));
}

#[test]
#[cfg_attr(
    feature = "cuda",
    ignore = "this build has the cuda backend: a cuda device is not missing from it"
)]
fn a_gpu_device_missing_from_the_build_is_a_param_error() {
    let pipeline = PIPELINE.replace("device = \"cpu\"", "device = \"cuda\"");
    let mut t = Test::new().pipeline(&pipeline).args(["run"]).status(2);
    let done = t.run();
    assert!(done.stderr.contains("cuda"), "{}", done.stderr);
}

/// The real Lite0 ImageNet weights (../shared/fixtures) go through a `pretrained` stage into
/// training; the bundle's encoder starts from them (its stem differs from a random one's).
#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when covseg was built (touch stages/prerequisites.rs after adding it)"
)]
fn imagenet_weights_flow_from_a_pretrained_stage_into_training() {
    let weights = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/effnet_lite0/weights.safetensors");
    assert!(
        weights.is_file(),
        "{} is absent (the shared fixtures)",
        weights.display()
    );
    let pipeline = PIPELINE
        .replace(
            "preprocessing = \"@split.preprocessing\" }",
            "preprocessing = \"@split.preprocessing\", weights = \"@imagenet.weights\" }",
        )
        .replace(
            "model = { encoder = \"plain\", encoder_depth = 3, decoder_channels = [32, 16, 8] }",
            "encoder_weights = \"imagenet\", epochs = 1, lr = 1e-9, min_lr = 0.0, model = { encoder = \"efficientnet-lite0\", encoder_depth = 3 }",
        )
        .replace("epochs = 2, ", "")
        + &format!(
            "\n[[stage]]\nname = \"imagenet\"\nkind = \"pretrained\"\ninputs = {{ file = \"{}\" }}\nparams = {{ encoder = \"efficientnet-lite0\" }}\n",
            weights.display()
        );
    let mut t = Test::new().pipeline(&pipeline).args(["run"]);
    t.run();
    assert!(t.last_outcomes().iter().all(|(_, o)| o == "ran"));
    assert_eq!(
        std::fs::read(t.output("imagenet", "weights.safetensors")).unwrap(),
        std::fs::read(&weights).unwrap()
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("train", "bundle/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["encoder_weights"], "imagenet");
    assert_eq!(config["model"]["encoder"], "efficientnet-lite0");

    // The encoder started from the file: with lr 1e-9 one epoch moves no weight by more than
    // 1e-6, so the trained convolutions are the checkpoint's (a random start differs by ~0.1).
    let file = crate::test::safetensors(&weights);
    let bundle = crate::test::safetensors(&t.output("train", "bundle/weights.safetensors"));
    let close = |a: &[f32], b: &[f32]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5)
    };
    let find = |shape: &[usize], values: &[f32]| {
        bundle
            .iter()
            .filter(|(_, (s, v))| s == shape && close(v, values))
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>()
    };
    // The grey stem is the sum of the RGB kernels.
    let (shape, rgb) = &file["_conv_stem.weight"];
    let mut grey = vec![0f32; shape[0] * 9];
    for o in 0..shape[0] {
        for c in 0..3 {
            for k in 0..9 {
                grey[o * 9 + k] += rgb[(o * 3 + c) * 9 + k];
            }
        }
    }
    assert_eq!(
        find(&[shape[0], 1, 3, 3], &grey).len(),
        1,
        "the bundle's stem is the checkpoint's, summed over RGB"
    );
    for name in [
        "_blocks.1._expand_conv.weight",
        "_blocks.1._project_conv.weight",
        "_blocks.2._depthwise_conv.weight",
    ] {
        let (shape, values) = &file[name];
        assert_eq!(find(shape, values).len(), 1, "{name} in the trained bundle");
    }
}

#[test]
fn imagenet_weights_without_a_weights_input_are_refused_before_running() {
    let pipeline = PIPELINE.replace("epochs = 2,", "encoder_weights = \"imagenet\", epochs = 2,");
    let mut t = Test::new().pipeline(&pipeline).args(["run"]).status(2);
    let done = t.run();
    assert!(!t.cache().exists(), "nothing may run");
    insta::assert_snapshot!(done.stderr);
}

#[test]
#[cfg_attr(
    feature = "cuda",
    ignore = "this build has the cuda backend: a cuda device is not missing from it"
)]
fn the_pipeline_device_is_the_default_of_every_stage_with_a_device() {
    let with_pipeline_device =
        |device: &str| PIPELINE.replace("seed = 3", &format!("seed = 3\ndevice = \"{device}\""));
    // No device of its own: the train stage takes the pipeline's, which this build lacks.
    let pipeline = with_pipeline_device("cuda").replace(", device = \"cpu\"", "");
    let mut t = Test::new().pipeline(&pipeline).args(["plan"]).status(2);
    let done = t.run();
    assert!(
        done.stderr.contains("stage `train`: params.device"),
        "{}",
        done.stderr
    );
    // The stage's own device wins.
    let mut t = Test::new()
        .pipeline(&with_pipeline_device("cuda"))
        .args(["plan"]);
    t.run();
    // And the pipeline's device is what the stage's key holds.
    let pipeline = with_pipeline_device("cpu").replace(", device = \"cpu\"", "");
    let mut t = Test::new().pipeline(&pipeline).args(["explain", "train"]);
    let done = t.run();
    assert!(done.stdout.contains("device"), "{}", done.stdout);
    assert!(done.stdout.contains("\"cpu\""), "{}", done.stdout);
}
