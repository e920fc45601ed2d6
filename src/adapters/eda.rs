//! The `eda` kind: an HTML page with plots of what a dataset holds (class balance per source and
//! split part, intensity per class, lesion sizes, lesion-free slices, sample slices).

use covseg_stages::data::{eda, stats};

use super::ALL_CPUS;
use crate::pipeline::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, StageFailure, StageJob, StageKind, typed_params,
};

pub(super) struct Eda;

const EDA_REPORT: OutputSpec = OutputSpec {
    name: "report",
    file: "eda",
    about: "folder: eda.html, eda.json, class_balance.png and per source <source>_histograms.png, <source>_lesion_sizes.png, <source>_samples.png",
};

impl StageKind for Eda {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "eda",
            version: 1,
            about: "exploratory data analysis as an HTML page with plots: class balance per source and split part, intensity per class, lesion sizes, lesion-free slices, sample slices",
            inputs: &[
                InputSpec {
                    name: "medseg_images",
                    required: false,
                    about: "images_medseg.npy or a synth stage's images",
                },
                InputSpec {
                    name: "medseg_masks",
                    required: false,
                    about: "masks_medseg.npy or a synth stage's masks",
                },
                InputSpec {
                    name: "radiopedia_images",
                    required: false,
                    about: "images_radiopedia.npy",
                },
                InputSpec {
                    name: "radiopedia_masks",
                    required: false,
                    about: "masks_radiopedia.npy",
                },
                InputSpec {
                    name: "folder",
                    required: false,
                    about: "an image-folder dataset (images/<id>.png|jpg, masks/<id>.png)",
                },
                InputSpec {
                    name: "manifest",
                    required: false,
                    about: "a split manifest, for the class balance of each split part",
                },
            ],
            outputs: &[EDA_REPORT],
            uses_seed: false,
            resources: ALL_CPUS,
            golden: &[(1, "303c98092c060f0e")],
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<eda::EdaConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn check_inputs(&self, wired: &[&str], _params: &serde_json::Value) -> Result<(), String> {
        let has = |n: &str| wired.contains(&n);
        for (a, b) in [
            ("medseg_images", "medseg_masks"),
            ("radiopedia_images", "radiopedia_masks"),
        ] {
            if has(a) != has(b) {
                return Err(format!(
                    "inputs `{a}` and `{b}` go together: give both or neither"
                ));
            }
        }
        if !has("medseg_images") && !has("radiopedia_images") && !has("folder") {
            return Err("needs a dataset: `medseg_images` + `medseg_masks`, `radiopedia_images` + `radiopedia_masks`, or `folder`".into());
        }
        Ok(())
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: eda::EdaConfig = job.config()?;
        let kaggle: Vec<_> = ["medseg", "radiopedia"]
            .into_iter()
            .filter_map(|name| {
                let images = job.input(&format!("{name}_images"))?;
                Some((name, images, job.input(&format!("{name}_masks"))?))
            })
            .collect();
        let folder = job.input("folder");
        // One step per source read, one for the numbers and one for the page.
        job.progress.start(
            (kaggle.len() + usize::from(folder.is_some()) + 2) as u64,
            "steps",
        );
        let mut sources = Vec::new();
        for (name, images, masks) in kaggle {
            sources.push(eda::load_kaggle(name, images, masks)?);
            job.progress.advance(1);
        }
        if let Some(root) = folder {
            sources.push(eda::load_folder(root, &config.label_map)?);
            job.progress.advance(1);
        }
        let manifest = job
            .input("manifest")
            .map(stats::read_manifest)
            .transpose()?;
        let report = eda::analyse(&sources, manifest.as_ref(), &config)?;
        job.progress.advance(1);
        eda::write_report(&sources, &report, &config, &job.output(&EDA_REPORT))?;
        job.progress.advance(1);
        let lesion_free: Vec<String> = report
            .groups
            .iter()
            .filter(|g| g.part == "all")
            .map(|g| {
                format!(
                    "{} {} slices, {:.0} % lesion-free",
                    g.source,
                    g.slices,
                    100.0 * g.lesion_free_share
                )
            })
            .collect();
        tracing::info!("eda: {}", lesion_free.join("; "));
        Ok(())
    }
}
