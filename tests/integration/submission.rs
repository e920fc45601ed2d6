//! evaluate → predict → package-submission through the real binary, after a tiny training run.

use crate::test::Test;

/// The train tests' pipeline, then test phantoms, evaluate, predict and the submission.
fn pipeline() -> String {
    format!("{}{STAGES}", crate::train::PIPELINE)
}

const STAGES: &str = r#"
[[stage]]
name = "test-phantoms"
kind = "synth"
params = { slices = 3, size = 64 }

[[stage]]
name = "evaluate"
kind = "evaluate"
inputs = { bundle = "@train.bundle", val_images = "@split.val_images", val_labels = "@split.val_labels", curve = "@train.curve" }
params = { device = "cpu", report_slices = 2 }

[[stage]]
name = "predict"
kind = "predict"
inputs = { bundle = "@evaluate.bundle", images = "@test-phantoms.images" }
params = { device = "cpu", tta = "flip2" }

[[stage]]
name = "submission"
kind = "package-submission"
inputs = { predictions = "@predict.predictions" }
params = { size = 64 }
"#;

#[test]
fn a_trained_bundle_becomes_a_validated_submission() {
    let mut t = Test::new().pipeline(&pipeline()).args(["run"]);
    t.run();
    assert!(t.last_outcomes().iter().all(|(_, o)| o == "ran"));

    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("evaluate", "metrics.json")).unwrap())
            .unwrap();
    for key in ["score", "score_before_sweep", "seconds_per_slice"] {
        assert!(metrics[key].is_number(), "{key} in {metrics}");
    }
    assert_eq!(metrics["slices"], 3);
    assert_eq!(metrics["sweep"].as_array().unwrap().len(), 19);
    let per_slice = std::fs::read_to_string(t.output("evaluate", "per_slice.csv")).unwrap();
    assert_eq!(per_slice.lines().count(), 1 + 3);
    for file in ["report.html", "best.png", "worst.png", "curve.png"] {
        assert!(
            t.output("evaluate", &format!("report/{file}")).is_file(),
            "{file}"
        );
    }
    // The evaluated bundle carries the thresholds the sweep chose.
    let thresholds: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.output("evaluate", "bundle/thresholds.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(thresholds, metrics["thresholds"]);

    let masks = t.output("predict", "predictions/masks.npy");
    let header = std::fs::read(&masks).unwrap();
    let text = String::from_utf8_lossy(&header[..128]);
    assert!(text.contains("'shape': (3, 64, 64, 2)"), "{text}");
    assert!(text.contains("'descr': '|b1'"), "{text}");
    let timing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("predict", "timing.json")).unwrap())
            .unwrap();
    assert_eq!(timing["tta"], "flip2");
    assert_eq!(timing["slices"], 3);

    let csv = std::fs::read_to_string(t.output("submission", "submission/submission.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 * 64 * 64 * 2);
    // Ids count up from 0 in (slice, row, column, class) order; the values are the model's.
    for (i, line) in csv.lines().skip(1).take(1000).enumerate() {
        let (id, value) = line.split_once(',').unwrap();
        assert_eq!(id, i.to_string());
        assert!(value == "0" || value == "1", "{line}");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("submission", "summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["rows"], 3 * 64 * 64 * 2);

    t.then(["run"]).go();
    assert!(t.last_outcomes().iter().all(|(_, o)| o == "hit"));

    // One evaluate param changes: evaluate reruns, nothing upstream does.
    let changed = pipeline().replace("report_slices = 2", "report_slices = 1");
    std::fs::write(t.path().join("pipeline.toml"), changed).unwrap();
    t.then(["run"]).go();
    for (stage, outcome) in t.last_outcomes() {
        let expected = match stage.as_str() {
            "evaluate" => "ran",
            // Same bundle and thresholds out of evaluate: what follows is found in the cache.
            _ => "hit",
        };
        assert_eq!(outcome, expected, "{stage}");
    }
}

#[test]
fn predict_needs_exactly_one_source() {
    let pipeline = pipeline().replace(
        "inputs = { bundle = \"@evaluate.bundle\", images = \"@test-phantoms.images\" }",
        "inputs = { bundle = \"@evaluate.bundle\" }",
    );
    let mut t = Test::new().pipeline(&pipeline).args(["run"]).status(2);
    let done = t.run();
    assert!(
        done.stderr.contains(
            "needs `images` (Kaggle .npy), `folder` (an image folder) or `volumes` (NIfTI or DICOM)"
        ),
        "{}",
        done.stderr
    );
}
