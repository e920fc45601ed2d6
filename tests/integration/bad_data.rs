//! Bad input data gets one clear error naming the file, exit code 2, and no artifact.

use crate::test::{Test, write_f64_npy};

const SPLIT: &str = r#"
[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "data/images_medseg.npy", medseg_masks = "data/masks_medseg.npy" }
params = { folds = 2 }
"#;

fn failing(t: &mut Test) -> String {
    let out = t.then(["run"]).expect(2).go();
    assert!(t.objects().is_empty(), "a failed stage leaves no entry");
    assert_eq!(
        std::fs::read_dir(t.cache().join("tmp")).unwrap().count(),
        0,
        "and no staging debris"
    );
    out.stderr
        .lines()
        .filter(|l| l.starts_with("error"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn nan_wrong_shape_and_count_mismatch() {
    let mut t = Test::new()
        .pipeline(SPLIT)
        .args(["synth", "--out", "data", "--slices", "4", "--size", "64"]);
    t.run();
    let images = t.path().join("data/images_medseg.npy");
    let mut values = vec![-800.0; 4 * 64 * 64];
    values[3 * 64 * 64 + 5] = f64::NAN;
    write_f64_npy(&images, &[4, 64, 64, 1], &values);
    assert!(
        failing(&mut t).contains("data/images_medseg.npy: slice 3 holds NaN or infinite values")
    );

    write_f64_npy(&images, &[4, 64, 64], &vec![0.0; 4 * 64 * 64]);
    assert!(
        failing(&mut t)
            .contains("images have shape (4,64,64), expected (slices, height, width, 1)")
    );

    write_f64_npy(&images, &[3, 64, 64, 1], &vec![0.0; 3 * 64 * 64]);
    assert!(failing(&mut t).contains("masks_medseg.npy has 4 slices but images_medseg.npy has 3"));

    std::fs::write(&images, b"garbage").unwrap();
    assert!(failing(&mut t).contains("data/images_medseg.npy: not a .npy file"));
}

#[test]
fn empty_image_folder() {
    let toml = "[[stage]]\nname = \"split\"\nkind = \"split\"\ninputs = { folder = \"ds\" }\nparams = { size = 64, folds = 2 }\n";
    let mut t = Test::new()
        .pipeline(toml)
        .file("ds/images/.keep", "")
        .file("ds/masks/.keep", "");
    assert!(failing(&mut t).contains("ds/images: holds no .png or .jpg images"));
    t = t
        .file("ds/images/1.png", "not an image")
        .file("ds/masks/1.png", "not a mask")
        .file("ds/images/2.png", "not an image")
        .file("ds/masks/2.png", "not a mask");
    let err = failing(&mut t);
    assert!(
        err.contains("ds/images/1.png: cannot decode the image"),
        "{err}"
    );
}
