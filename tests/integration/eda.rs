//! The `eda` kind: an HTML page whose plots are drawn, per source and split part.

use crate::test::Test;

const PIPELINE: &str = r#"
[pipeline]
seed = 9

[[stage]]
name = "phantoms"
kind = "synth"
params = { slices = 20, size = 64 }

[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "@phantoms.images", medseg_masks = "@phantoms.masks" }
params = { folds = 4, fold = 1 }

[[stage]]
name = "eda"
kind = "eda"
inputs = { medseg_images = "@phantoms.images", medseg_masks = "@phantoms.masks", manifest = "@split.manifest" }
params = { pixel_spacing_mm = 0.8, samples = 6 }
"#;

/// Whether a PNG has more than a couple of colours, i.e. something was drawn.
fn drawn(png: &std::path::Path) -> bool {
    let picture = image::open(png).unwrap().to_rgb8();
    let colours: std::collections::BTreeSet<[u8; 3]> = picture.pixels().map(|p| p.0).collect();
    colours.len() > 16
}

#[test]
fn eda_writes_a_page_with_drawn_plots_and_the_numbers_per_split_part() {
    let mut t = Test::new().pipeline(PIPELINE).args(["run"]);
    t.run();
    let dir = t.output("eda", "eda");
    let html = std::fs::read_to_string(dir.join("eda.html")).unwrap();
    for png in [
        "class_balance.png",
        "medseg_histograms.png",
        "medseg_lesion_sizes.png",
        "medseg_samples.png",
    ] {
        assert!(
            html.contains(&format!("src=\"{png}\"")),
            "{png} in the page"
        );
        assert!(drawn(&dir.join(png)), "{png} is drawn");
    }
    assert!(
        html.contains("medseg train") && html.contains("medseg val"),
        "{html}"
    );
    assert!(html.contains("<th>mm²</th>"), "spacing given: areas in mm²");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("eda.json")).unwrap()).unwrap();
    let groups = report["groups"].as_array().unwrap();
    let slices = |part: &str| {
        groups.iter().find(|g| g["part"] == part).unwrap()["slices"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(slices("all"), 20);
    assert_eq!(slices("train") + slices("val"), 20);
    assert_eq!(slices("val"), 5);
    for g in groups {
        let share: f64 = g["class_share"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((share - 1.0).abs() < 1e-9, "{g}");
        assert!(
            g["class_share"]["ggo"].as_f64().unwrap() > 0.0,
            "phantoms have GGO"
        );
    }
    let lesions = report["lesions"].as_array().unwrap();
    let ggo = lesions.iter().find(|l| l["class"] == "ggo").unwrap();
    assert!(ggo["count"].as_u64().unwrap() > 0);
    let px = ggo["pixels_percentiles"][2].as_f64().unwrap();
    let mm2 = ggo["mm2_percentiles"][2].as_f64().unwrap();
    assert!((mm2 - px * 0.64).abs() < 1e-9);
}

#[test]
fn eda_without_a_dataset_is_refused_before_running() {
    let toml = PIPELINE.replace(
        "inputs = { medseg_images = \"@phantoms.images\", medseg_masks = \"@phantoms.masks\", manifest = \"@split.manifest\" }",
        "inputs = { medseg_images = \"@phantoms.images\", manifest = \"@split.manifest\" }",
    );
    let mut t = Test::new().pipeline(&toml).args(["plan"]).status(2);
    let out = t.run();
    assert!(
        out.stderr
            .contains("inputs `medseg_images` and `medseg_masks` go together"),
        "{}",
        out.stderr
    );
}

/// The real MedSeg-derived image folder of ../shared, with its split: 8-bit histograms, lesions of
/// real slices, samples.
#[test]
#[cfg_attr(
    not(covseg_shared),
    ignore = "needs ../shared, absent when covseg was built (touch stages/prerequisites.rs after adding it)"
)]
fn eda_of_the_shared_image_folder() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/medseg-covid-semiseg-train");
    assert!(shared.is_dir(), "{} is absent", shared.display());
    let toml = format!(
        "[[stage]]\nname = \"split\"\nkind = \"split\"\ninputs = {{ folder = \"{0}\" }}\nparams = {{ size = 128, folds = 5 }}\n\n[[stage]]\nname = \"eda\"\nkind = \"eda\"\ninputs = {{ folder = \"{0}\", manifest = \"@split.manifest\" }}\n",
        shared.display()
    );
    let mut t = Test::new().pipeline(&toml).args(["run"]);
    t.run();
    let dir = t.output("eda", "eda");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("eda.json")).unwrap()).unwrap();
    let parts: Vec<(&str, u64)> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["part"].as_str().unwrap(), g["slices"].as_u64().unwrap()))
        .collect();
    assert_eq!(parts, [("all", 50), ("train", 40), ("val", 10)]);
    for png in [
        "folder_histograms.png",
        "folder_lesion_sizes.png",
        "folder_samples.png",
    ] {
        assert!(drawn(&dir.join(png)), "{png}");
    }
    let html = std::fs::read_to_string(dir.join("eda.html")).unwrap();
    assert!(html.contains("<h2>folder</h2>"), "{html}");
}
