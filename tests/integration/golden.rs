//! Golden outputs: every kind runs on fixed tiny inputs, and the digest of its outputs must be the
//! one its `KindSpec::golden` records for its current `version`. Code that changes a kind's results
//! fails here until the kind's version is bumped (and the new digest recorded), so a forgotten
//! bump breaks CI instead of handing users cached results of the old code.

use std::collections::BTreeMap;

use crate::test::Test;

/// Every kind once, small: phantoms, split, augmentation, statistics, weights converted from a
/// committed `.pth`, a two-trial search, training, evaluation, prediction and the submission.
const PIPELINE: &str = r#"
[pipeline]
name = "golden"
seed = 5
device = "cpu"

[[stage]]
name = "synth"
kind = "synth"
params = { slices = 8, size = 64 }

[[stage]]
name = "synth-volumes"
kind = "synth-volumes"
params = { volumes = 1, slices = 4, size = 64 }

[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "@synth.images", medseg_masks = "@synth.masks" }
params = { folds = 1, val_fraction = 0.25 }

[[stage]]
name = "augment-cache"
kind = "augment-cache"
inputs = { images = "@split.train_images", labels = "@split.train_labels" }
params = { copies = 1 }

[[stage]]
name = "stats"
kind = "stats"
inputs = { images = "@synth.images", masks = "@synth.masks", manifest = "@split.manifest" }
params = { part = "train" }

[[stage]]
name = "eda"
kind = "eda"
inputs = { medseg_images = "@synth.images", medseg_masks = "@synth.masks", manifest = "@split.manifest" }
params = { samples = 4, pixel_spacing_mm = 0.7 }

[[stage]]
name = "pretrained"
kind = "pretrained"
inputs = { file = "tiny_state_dict.pth" }
params = { encoder = "efficientnet-lite0" }

[[stage]]
name = "tune"
kind = "tune"
inputs = { shards = "@augment-cache.shards", val_images = "@split.val_images", val_labels = "@split.val_labels", preprocessing = "@split.preprocessing" }
[stage.params]
trials = 2
startup_trials = 2
space = { lr = { log_uniform = [1e-3, 1e-2] } }
train = { epochs = 1, batch_size = 4, model = { encoder = "plain", encoder_depth = 3, decoder_channels = [8, 8, 4] } }

[[stage]]
name = "train"
kind = "train"
inputs = { shards = "@augment-cache.shards", val_images = "@split.val_images", val_labels = "@split.val_labels", preprocessing = "@split.preprocessing" }
params = { epochs = 1, batch_size = 4, model = { encoder = "plain", encoder_depth = 3, decoder_channels = [8, 8, 4] } }

[[stage]]
name = "evaluate"
kind = "evaluate"
inputs = { bundle = "@train.bundle", val_images = "@split.val_images", val_labels = "@split.val_labels", curve = "@train.curve" }
params = { report_slices = 1 }

[[stage]]
name = "predict"
kind = "predict"
inputs = { bundle = "@evaluate.bundle", images = "@synth.images" }

[[stage]]
name = "package-submission"
kind = "package-submission"
inputs = { predictions = "@predict.predictions" }
params = { size = 64 }
"#;

/// Outputs that record wall-clock times (or when things ran), so never the same bytes twice.
const TIMED: &[(&str, &str)] = &[
    ("train", "metrics"),
    ("tune", "trials_csv"),
    ("tune", "trials"),
    ("evaluate", "metrics"),
    ("evaluate", "report"),
    ("predict", "timing"),
];

/// One digest per kind over the digests of its outputs (timed ones left out).
fn output_digests(t: &Test) -> BTreeMap<String, String> {
    let runs = t.runs();
    let run = runs.last().unwrap();
    let mut out = BTreeMap::new();
    for stage in run["stages"].as_array().unwrap() {
        let kind = stage["kind"].as_str().unwrap().to_owned();
        let key = stage["key"].as_str().unwrap();
        let entry: serde_json::Value = serde_json::from_slice(
            &std::fs::read(t.cache().join("objects").join(key).join("entry.json")).unwrap(),
        )
        .unwrap();
        let mut hasher = blake3::Hasher::new();
        for (name, output) in entry["outputs"].as_object().unwrap() {
            if TIMED.contains(&(kind.as_str(), name.as_str())) {
                continue;
            }
            hasher.update(name.as_bytes());
            hasher.update(b"=");
            hasher.update(output["digest"].as_str().unwrap().as_bytes());
            hasher.update(b"\n");
        }
        out.insert(kind, hasher.finalize().to_hex()[..16].to_owned());
    }
    out
}

#[test]
fn every_kind_has_the_golden_outputs_of_its_version() {
    let pth = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("stages/tests/fixtures/tiny_state_dict.pth");
    let mut t = Test::new().pipeline(PIPELINE).args(["run"]);
    std::fs::copy(&pth, t.path().join("tiny_state_dict.pth")).unwrap();
    t.run();
    let digests = output_digests(&t);
    let registry = covseg::adapters::registry();
    let mut problems = Vec::new();
    for kind in registry.kinds() {
        let spec = kind.spec();
        let Some(now) = digests.get(spec.name) else {
            problems.push(format!("{}: not in the golden pipeline; add it", spec.name));
            continue;
        };
        match spec.golden.last() {
            None => problems.push(format!(
                "{}: no golden digest recorded; add `golden: &[({}, \"{now}\")]`",
                spec.name, spec.version
            )),
            Some((version, digest)) if *version == spec.version && digest == now => {}
            Some((version, _)) if *version != spec.version => problems.push(format!(
                "{}: version {} but its last golden entry is for version {version}; record \
                 ({}, \"{now}\")",
                spec.name, spec.version, spec.version
            )),
            _ => problems.push(format!(
                "{}: its outputs changed (digest now {now}) but its version is still {}: bump \
                 `version` to {} and append ({}, \"{now}\") to `golden`",
                spec.name,
                spec.version,
                spec.version + 1,
                spec.version + 1
            )),
        }
        let versions: Vec<u32> = spec.golden.iter().map(|(v, _)| *v).collect();
        if versions.windows(2).any(|w| w[0] >= w[1]) {
            problems.push(format!("{}: golden versions must increase", spec.name));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));

    // The same inputs again, from scratch: the same digests (what the test relies on).
    let mut again = Test::new().pipeline(PIPELINE).args(["run"]);
    std::fs::copy(&pth, again.path().join("tiny_state_dict.pth")).unwrap();
    again.run();
    assert_eq!(output_digests(&again), digests);
}
