//! Running: hits and misses, `--stage`, `--force`, `--dry-run`, plan and explain.

use crate::test::{Test, pipeline, redact};

fn outcomes(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn second_run_is_all_hits_and_a_param_change_reruns_only_its_stage() {
    let mut t = Test::new().pipeline(&pipeline("folds = 3")).args(["run"]);
    let first = t.run();
    assert_eq!(
        t.last_outcomes(),
        outcomes(&[("phantoms", "ran"), ("holdout", "ran"), ("split", "ran")])
    );
    insta::assert_snapshot!("run_first", redact(&first.stdout));
    t.then(["run"]).go();
    assert_eq!(
        t.last_outcomes(),
        outcomes(&[("phantoms", "hit"), ("holdout", "hit"), ("split", "hit")])
    );
    let objects = t.objects();
    assert_eq!(objects.len(), 3);

    std::fs::write(t.path().join("pipeline.toml"), pipeline("folds = 2")).unwrap();
    let plan = t.then(["plan"]).go();
    insta::assert_snapshot!("plan_after_param_change", redact(&plan.stdout));
    let explain = t.then(["explain", "split"]).go();
    insta::assert_snapshot!("explain_after_param_change", redact(&explain.stdout));
    t.then(["run"]).go();
    assert_eq!(
        t.last_outcomes(),
        outcomes(&[("phantoms", "hit"), ("holdout", "hit"), ("split", "ran")])
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("split", "splits.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["folds"].as_array().unwrap().len(),
        2,
        "the new param reached the stage"
    );
    assert_eq!(t.objects().len(), 4, "the old result stays cached");

    // Back to the first value: the old entry is reused, nothing runs.
    std::fs::write(t.path().join("pipeline.toml"), pipeline("folds = 3")).unwrap();
    t.then(["run"]).go();
    assert_eq!(
        t.last_outcomes(),
        outcomes(&[("phantoms", "hit"), ("holdout", "hit"), ("split", "hit")])
    );
}

#[test]
fn writing_a_param_at_its_default_value_changes_nothing() {
    let mut t = Test::new().pipeline(&pipeline("")).args(["run"]);
    t.run();
    std::fs::write(
        t.path().join("pipeline.toml"),
        pipeline("folds = 5, fold = 0"),
    )
    .unwrap();
    t.then(["run"]).go();
    assert_eq!(
        t.last_outcomes(),
        outcomes(&[("phantoms", "hit"), ("holdout", "hit"), ("split", "hit")])
    );
}

const EXTERNAL: &str = r#"
[data]
root = "data"
hint = "make them with `covseg synth --out data`"
files = { images = "images_medseg.npy", masks = "masks_medseg.npy" }

[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "data:images", medseg_masks = "data:masks" }
"#;

#[test]
fn an_external_input_change_reruns_but_a_touch_does_not() {
    let mut t = Test::new().pipeline(EXTERNAL).args([
        "synth", "--out", "data", "--slices", "5", "--size", "64", "--seed", "1",
    ]);
    t.run();
    t.then(["run"]).go();
    assert_eq!(t.last_outcomes(), outcomes(&[("split", "ran")]));
    let hashing = |t: &Test| {
        let runs = t.runs();
        let h = &runs.last().unwrap()["hashing"];
        (h["files_hashed"].as_u64(), h["memo_hits"].as_u64())
    };
    assert_eq!(hashing(&t), (Some(2), Some(0)), "both inputs read once");

    // Nothing changed: both digests come from the memo, nothing is read.
    t.then(["run"]).go();
    assert_eq!(t.last_outcomes(), outcomes(&[("split", "hit")]));
    assert_eq!(hashing(&t), (Some(0), Some(2)), "the memo answered");

    // Same bytes, new mtime: the memo re-hashes that file once and finds the same digest.
    let images = t.path().join("data/images_medseg.npy");
    let bytes = std::fs::read(&images).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&images, &bytes).unwrap();
    t.then(["run"]).go();
    assert_eq!(t.last_outcomes(), outcomes(&[("split", "hit")]));
    assert_eq!(
        hashing(&t),
        (Some(1), Some(1)),
        "only the touched file was read"
    );

    t.then([
        "synth", "--out", "data", "--slices", "5", "--size", "64", "--seed", "2",
    ])
    .go();
    let explain = t.then(["explain", "split"]).go();
    insta::assert_snapshot!("explain_after_input_change", redact(&explain.stdout));
    t.then(["run"]).go();
    assert_eq!(t.last_outcomes(), outcomes(&[("split", "ran")]));
}

#[test]
fn stage_selection_runs_upstream_only() {
    let mut t = Test::new()
        .pipeline(&pipeline("folds = 2"))
        .args(["run", "--stage", "split"]);
    let out = t.run();
    assert_eq!(
        t.last_outcomes(),
        outcomes(&[("phantoms", "ran"), ("split", "ran")])
    );
    assert!(!out.stdout.contains("holdout"));
    t.then(["run", "--stage", "holdout"]).go();
    assert_eq!(t.last_outcomes(), outcomes(&[("holdout", "ran")]));
    t.then(["run", "--stage", "phantoms", "--force"]).go();
    assert_eq!(
        t.last_outcomes(),
        outcomes(&[("phantoms", "ran")]),
        "--force reruns the named stage only"
    );
    t.then(["run", "--stage", "split"]).go();
    assert_eq!(
        t.last_outcomes(),
        outcomes(&[("phantoms", "hit"), ("split", "hit")]),
        "a deterministic rerun keeps downstream cached"
    );
    let err = t.then(["run", "--stage", "splitt"]).expect(2).go();
    insta::assert_snapshot!("unknown_stage_argument", err.stderr);
}

#[test]
fn dry_run_writes_nothing() {
    let mut t = Test::new()
        .pipeline(&pipeline("folds = 2"))
        .args(["run", "--dry-run"]);
    let out = t.run();
    assert!(
        out.stdout
            .contains("3 stage(s): 0 cached, 3 to run, 0 blocked"),
        "{}",
        out.stdout
    );
    assert!(!t.cache().exists());
}

#[test]
fn plan_of_a_fresh_pipeline_and_the_dag() {
    let mut t = Test::new().pipeline(&pipeline("folds = 2")).args(["plan"]);
    insta::assert_snapshot!("plan_fresh", redact(&t.run().stdout));
    insta::assert_snapshot!("dag_text", t.then(["dag"]).go().stdout);
    insta::assert_snapshot!(
        "dag_mermaid",
        t.then(["dag", "--format", "mermaid"]).go().stdout
    );
    insta::assert_snapshot!("dag_dot", t.then(["dag", "--format", "dot"]).go().stdout);
}

#[test]
fn a_failing_stage_exits_2_for_bad_data_and_blocks_downstream() {
    let toml = r#"
[[stage]]
name = "few"
kind = "synth"
params = { slices = 2, size = 64 }

[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "@few.images", medseg_masks = "@few.masks" }
params = { folds = 5 }
"#;
    let mut t = Test::new().pipeline(toml).args(["run"]).status(2);
    let out = t.run();
    assert!(
        out.stderr.contains("has 2 slices, too few for 5 parts"),
        "{}",
        out.stderr
    );
    assert_eq!(
        t.last_outcomes(),
        outcomes(&[("few", "ran"), ("split", "failed")])
    );
    assert_eq!(t.objects().len(), 1, "no entry for the failed stage");
}

#[test]
fn json_logs() {
    let mut t = Test::new()
        .pipeline(&pipeline("folds = 2"))
        .args(["run", "--log-format", "json"]);
    let out = t.run();
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "running" && l["fields"]["stage"] == "split")
    );
}

#[test]
fn split_manifest_and_preprocessing() {
    let mut t = Test::new().pipeline(&pipeline("folds = 3, size = 32, windows = [{ center = -600, width = 1500 }, { center = 40, width = 400 }]")).args(["run"]);
    t.run();
    let manifest = std::fs::read_to_string(t.output("split", "splits.json")).unwrap();
    insta::assert_snapshot!("split_manifest", manifest);
    let pre: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("split", "preprocessing.json")).unwrap())
            .unwrap();
    assert_eq!(pre["size"], 32);
    assert_eq!(pre["windows"].as_array().unwrap().len(), 2);
    assert_eq!(pre["normalize"], "zscore");
    let header = std::fs::read(t.output("split", "train_images.npy")).unwrap();
    let header = String::from_utf8_lossy(&header[..128]);
    assert!(header.contains("'shape': (4, 2, 32, 32)"), "{header}");
}

#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when covseg was built (touch stages/prerequisites.rs after adding it)"
)]
fn split_of_the_shared_image_folder() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/medseg-covid-semiseg-train");
    assert!(
        shared.is_dir(),
        "{} is absent (the shared real-data folder)",
        shared.display()
    );
    let toml = format!(
        "[[stage]]\nname = \"split\"\nkind = \"split\"\ninputs = {{ folder = \"{}\" }}\nparams = {{ size = 128, folds = 5 }}\n",
        shared.display()
    );
    let mut t = Test::new().pipeline(&toml).args(["run"]);
    t.run();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("split", "splits.json")).unwrap()).unwrap();
    assert_eq!(manifest["val"].as_array().unwrap().len(), 10);
    assert_eq!(manifest["train"].as_array().unwrap().len(), 40);
    assert_eq!(
        manifest["original_sizes"].as_object().unwrap().len(),
        50,
        "every real slice is resized and its size remembered"
    );
    let pre: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("split", "preprocessing.json")).unwrap())
            .unwrap();
    assert_eq!(pre["source"], "eight-bit");
    let missing = Test::new()
        .pipeline(&toml.replace("size = 128, ", ""))
        .args(["run"])
        .status(2)
        .run();
    assert!(
        missing.stderr.contains("needs params.size"),
        "{}",
        missing.stderr
    );
}

/// A dataset folder whose `images/` is a symbolic link: its files are part of the input digest, so
/// changing one reruns the split.
#[test]
fn a_linked_images_folder_is_part_of_the_input_digest() {
    let toml = "[[stage]]\nname = \"split\"\nkind = \"split\"\ninputs = { folder = \"ds\" }\nparams = { size = 64, folds = 2 }\n";
    let mut t = Test::new().pipeline(toml).args([
        "synth", "--out", "raw", "--slices", "4", "--size", "64", "--seed", "1",
    ]);
    t.run();
    // Write the phantoms as a PNG folder elsewhere, then link it in as ds/images.
    let images =
        covseg_stages::data::kaggle::read_images(&t.path().join("raw/images_medseg.npy")).unwrap();
    let real = t.path().join("elsewhere/images");
    let masks = t.path().join("ds/masks");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::create_dir_all(&masks).unwrap();
    fn write(dir: &std::path::Path, id: usize, value: impl Fn(usize, usize) -> u8) {
        let mut raw = Vec::new();
        for y in 0..64 {
            raw.push(0u8);
            raw.extend((0..64).map(|x| value(y, x)));
        }
        let png = crate::bad_data::grey_png(64, 64, &raw);
        std::fs::write(dir.join(format!("{id}.png")), png).unwrap();
    }
    for id in 0..4 {
        write(&real, id, |y, x| {
            (images[[id, y, x, 0]].clamp(-1000.0, 255.0) as i32).rem_euclid(256) as u8
        });
        write(&masks, id, |y, x| u8::from((y / 16 + x / 16) % 3 == 0));
    }
    std::os::unix::fs::symlink(&real, t.path().join("ds/images")).unwrap();
    t.then(["run"]).go();
    assert_eq!(t.last_outcomes(), outcomes(&[("split", "ran")]));
    t.then(["run"]).go();
    assert_eq!(t.last_outcomes(), outcomes(&[("split", "hit")]));
    write(&real, 2, |_, x| x as u8);
    t.then(["run"]).go();
    assert_eq!(
        t.last_outcomes(),
        outcomes(&[("split", "ran")]),
        "a changed file behind the link reruns the split"
    );
}
