//! Training from CT volumes and predicting DICOM series, through the real binary: synthetic
//! volumes (NIfTI, labels, DICOM) → split by volume at a fixed pixel spacing → a tiny model →
//! predict on the DICOM series, whose label volumes must lie on the series' own grid.

use crate::test::Test;

const PIPELINE: &str = r#"
[pipeline]
name = "volumes-tiny"
seed = 5

[[stage]]
name = "vols"
kind = "synth-volumes"
params = { volumes = 2, slices = 6, size = 64 }

[[stage]]
name = "split"
kind = "split"
inputs = { volumes = "@vols.nifti", volume_labels = "@vols.labels" }
params = { folds = 1, val_fraction = 0.5, size = 48, pixel_mm = 7.0, label_map = { background = 0, ggo = 1, consolidation = 2, lung = 3 } }

[[stage]]
name = "augment"
kind = "augment-cache"
inputs = { images = "@split.train_images", labels = "@split.train_labels" }
params = { copies = 1 }

[[stage]]
name = "train"
kind = "train"
inputs = { shards = "@augment.shards", val_images = "@split.val_images", val_labels = "@split.val_labels", preprocessing = "@split.preprocessing" }
params = { epochs = 1, batch_size = 4, device = "cpu", model = { encoder = "plain", encoder_depth = 3, decoder_channels = [16, 8, 8] } }

[[stage]]
name = "predict"
kind = "predict"
inputs = { bundle = "@train.bundle", volumes = "@vols.dicom" }
"#;

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn volumes_train_by_volume_at_a_spacing_and_dicom_predictions_align_with_the_series() {
    let mut t = Test::new().pipeline(PIPELINE).args(["run"]);
    t.run();

    // Folds split by volume: the validation slices are one whole volume, training the other.
    let manifest = json(&t.output("split", "splits.json"));
    let volume_of =
        |r: &serde_json::Value| r.as_str().unwrap().split('/').nth(1).unwrap().to_owned();
    let val: std::collections::BTreeSet<String> = manifest["val"]
        .as_array()
        .unwrap()
        .iter()
        .map(volume_of)
        .collect();
    let train: std::collections::BTreeSet<String> = manifest["train"]
        .as_array()
        .unwrap()
        .iter()
        .map(volume_of)
        .collect();
    assert_eq!((val.len(), train.len()), (1, 1), "{manifest}");
    assert!(val.is_disjoint(&train));
    assert_eq!(manifest["val"].as_array().unwrap().len(), 6);
    let preprocessing = json(&t.output("split", "preprocessing.json"));
    assert_eq!(preprocessing["pixel_mm"], 7.0);
    assert_eq!(preprocessing["size"], 48);

    // The label volumes predicted from the DICOM series share each series' shape and affine.
    let series = covseg_stages::volume::read_all(&t.output("vols", "dicom")).unwrap();
    assert_eq!(series.len(), 2);
    let truth = json(&t.output("vols", "truth.json"));
    for s in &series {
        let path = t.output("predict", &format!("predictions/{}.nii.gz", s.name));
        let labels = covseg_stages::volume::nifti::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(labels.shape(), s.shape());
        for (a, b) in labels
            .affine
            .0
            .iter()
            .flatten()
            .zip(s.affine.0.iter().flatten())
        {
            assert!(
                (a - b).abs() < 1e-4,
                "{:?} vs {:?}",
                labels.affine,
                s.affine
            );
        }
        assert!(labels.hu.iter().all(|&v| [0.0, 1.0, 2.0, 3.0].contains(&v)));
        // The report describes the label volume written: its lungs are the labelled voxels,
        // and they hold at least the series' own lungs (lesions found outside them join them).
        let report = json(&t.output("predict", &format!("predictions/{}.report.json", s.name)));
        let voxel_ml = s.affine.voxel_volume() / 1000.0;
        let labelled = labels.hu.iter().filter(|&&v| v > 0.0).count() as f64 * voxel_ml;
        let got = report["lung_ml"]["whole"].as_f64().unwrap();
        assert!(
            (got - labelled).abs() < 1e-6 * labelled.max(1.0),
            "{got} vs {labelled} mL"
        );
        let want = truth["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["volume"] == s.name.as_str())
            .unwrap_or_else(|| panic!("{} in {truth}", s.name))["lung_ml"]["whole"]
            .as_f64()
            .unwrap();
        assert!(got > 0.85 * want, "lung {got} mL, true {want} mL");
        let involvement = report["involvement_percent"]["whole"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&involvement));
    }
}
