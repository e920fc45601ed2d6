//! The `augment-cache` kind: augmented copies of the training slices, in shards.

use covseg_stages::augmented;
use covseg_stages::data::npy;

use super::ALL_CPUS;
use crate::pipeline::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, StageFailure, StageJob, StageKind, typed_params,
};

pub(super) struct AugmentCache;

const AUG_SHARDS: OutputSpec = OutputSpec {
    name: "shards",
    file: "shards",
    about: "folder of images_NNNNN.npy (n,C,S,S) float32, labels_NNNNN.npy (n,S,S) uint8, index.json",
};
const AUG_PREVIEW: OutputSpec = OutputSpec {
    name: "preview",
    file: "preview.png",
    about: "a grid of augmented slices with labels overlaid",
};

impl StageKind for AugmentCache {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "augment-cache",
            version: 1,
            about: "K augmented copies of every training slice (rotation, flips, crop/scale, elastic, CLAHE, intensity), in shards",
            inputs: &[
                InputSpec {
                    name: "images",
                    required: true,
                    about: "a split's train_images",
                },
                InputSpec {
                    name: "labels",
                    required: true,
                    about: "a split's train_labels",
                },
                InputSpec {
                    name: "more_images",
                    required: false,
                    about: "more slices to add, e.g. a split's val_images for a final training on train + validation",
                },
                InputSpec {
                    name: "more_labels",
                    required: false,
                    about: "their labels (with more_images)",
                },
            ],
            outputs: &[AUG_SHARDS, AUG_PREVIEW],
            uses_seed: true,
            resources: ALL_CPUS,
            golden: &[(1, "00e446ec23ab8bcf")],
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<augmented::AugmentCacheConfig>(raw, |c| {
            c.validate().map_err(|e| e.to_string())
        })
    }

    fn check_inputs(&self, wired: &[&str], _params: &serde_json::Value) -> Result<(), String> {
        if wired.contains(&"more_images") != wired.contains(&"more_labels") {
            return Err("wire both more_images and more_labels (e.g. \"@split.val_images\" and \"@split.val_labels\"), or neither".into());
        }
        Ok(())
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: augmented::AugmentCacheConfig = job.config()?;
        let mut images: ndarray::Array4<f32> = npy::read(job.required("images")?)?;
        let mut labels: ndarray::Array3<u8> = npy::read(job.required("labels")?)?;
        if let (Some(more_images), Some(more_labels)) =
            (job.input("more_images"), job.input("more_labels"))
        {
            let extra_images: ndarray::Array4<f32> = npy::read(more_images)?;
            let extra_labels: ndarray::Array3<u8> = npy::read(more_labels)?;
            let mismatch = |path: &std::path::Path, what: String| -> StageFailure {
                covseg_stages::Error::invalid_data(path, what).into()
            };
            images = ndarray::concatenate(ndarray::Axis(0), &[images.view(), extra_images.view()])
                .map_err(|_| {
                    mismatch(
                        more_images,
                        format!(
                            "shape {:?} does not match the images' {:?} after the first axis",
                            extra_images.dim(),
                            images.dim()
                        ),
                    )
                })?;
            labels = ndarray::concatenate(ndarray::Axis(0), &[labels.view(), extra_labels.view()])
                .map_err(|_| {
                    mismatch(
                        more_labels,
                        format!(
                            "shape {:?} does not match the labels' {:?} after the first axis",
                            extra_labels.dim(),
                            labels.dim()
                        ),
                    )
                })?;
        }
        let dir = job.output(&AUG_SHARDS);
        let index = augmented::build(&images, &labels, &config, job.seed, &dir, job.progress)?;
        let picture = augmented::preview(&dir, &index, config.preview)?;
        covseg_stages::render::save_png(&job.output(&AUG_PREVIEW), &picture)?;
        Ok(())
    }
}
