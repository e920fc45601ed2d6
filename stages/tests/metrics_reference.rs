//! The metrics agree with an independent computation in Python/numpy on random masks. Ignored, with
//! the reason in the summary, where python3 with numpy was not available at build time.

use std::process::Command;

use covseg_stages::data::npy;
use covseg_stages::metrics::evaluate;
use ndarray::Array4;
use rand::{RngExt, SeedableRng};

const SCRIPT: &str = r#"
import json, sys
import numpy as np
pred, truth = np.load(sys.argv[1]), np.load(sys.argv[2])
out = []
for k in range(pred.shape[1]):
    p, t = pred[:, k], truth[:, k]
    tp = int(np.sum(p & t)); fp = int(np.sum(p & ~t)); fn = int(np.sum(~p & t))
    r = lambda a, b: 1.0 if b == 0 else a / b
    dice = []
    for i in range(p.shape[0]):
        a, b = p[i], t[i]
        s = a.sum() + b.sum()
        dice.append(1.0 if s == 0 else 2.0 * np.sum(a & b) / s)
    out.append(dict(f1=r(2 * tp, 2 * tp + fp + fn), precision=r(tp, tp + fp), recall=r(tp, tp + fn),
                    iou=r(tp, tp + fp + fn), per_image_dice=float(np.mean(dice))))
print(json.dumps(out))
"#;

#[test]
#[cfg_attr(
    not(covseg_numpy),
    ignore = "needs python3 with numpy, absent when this crate was built (touch stages/prerequisites.rs after installing it)"
)]
fn agrees_with_numpy_on_random_masks() {
    let has_numpy = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_numpy,
        "python3 with numpy is needed for the independent check (CI installs it)"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let shape = (7, 2, 24, 20);
    // Sparse, lesion-like masks, with an empty slice in each so the empty conventions are exercised.
    let truth = Array4::from_shape_fn(shape, |(i, k, _, _)| {
        i != 3 && rng.random::<f64>() < 0.1 + 0.1 * k as f64
    });
    let pred = Array4::from_shape_fn(shape, |(i, _, y, x)| {
        i != 3 && (truth[[i, 0, y, x]] ^ (rng.random::<f64>() < 0.08))
    });
    let dir = tempfile::tempdir().unwrap();
    let (p, t) = (dir.path().join("pred.npy"), dir.path().join("truth.npy"));
    npy::write(&p, &pred).unwrap();
    npy::write(&t, &truth).unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&p)
        .arg(&t)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ours = evaluate(pred.view(), truth.view(), &["ggo", "consolidation"]);
    for (c, r) in ours.classes.iter().zip(&reference) {
        for (name, value) in [
            ("f1", c.f1),
            ("precision", c.precision),
            ("recall", c.recall),
            ("iou", c.iou),
            ("per_image_dice", c.per_image_dice),
        ] {
            let expected = r[name].as_f64().unwrap();
            assert!(
                (value - expected).abs() < 1e-12,
                "{} {name}: covseg {value}, numpy {expected}",
                c.class
            );
        }
    }
    let mean = (reference[0]["f1"].as_f64().unwrap() + reference[1]["f1"].as_f64().unwrap()) / 2.0;
    assert!((ours.score - mean).abs() < 1e-12);
}
