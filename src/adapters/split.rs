//! The `split` kind: train/validation split and preprocessing.

use covseg_stages::data::{npy, split};

use super::{ALL_CPUS, write_json};
use crate::pipeline::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, StageFailure, StageJob, StageKind, typed_params,
};

pub(super) struct Split;

const SPLIT_MANIFEST: OutputSpec = OutputSpec {
    name: "manifest",
    file: "splits.json",
    about: "folds and the chosen train/val slice lists",
};
const SPLIT_PREPROCESSING: OutputSpec = OutputSpec {
    name: "preprocessing",
    file: "preprocessing.json",
    about: "windows, size and normalisation every later stage applies",
};
const SPLIT_TRAIN_IMAGES: OutputSpec = OutputSpec {
    name: "train_images",
    file: "train_images.npy",
    about: "(N,C,S,S) float32 windowed to [0,1]",
};
const SPLIT_TRAIN_LABELS: OutputSpec = OutputSpec {
    name: "train_labels",
    file: "train_labels.npy",
    about: "(N,S,S) uint8: 0 background, 1 GGO, 2 consolidation, 3 other lung",
};
const SPLIT_VAL_IMAGES: OutputSpec = OutputSpec {
    name: "val_images",
    file: "val_images.npy",
    about: "(N,C,S,S) float32 windowed to [0,1]",
};
const SPLIT_VAL_LABELS: OutputSpec = OutputSpec {
    name: "val_labels",
    file: "val_labels.npy",
    about: "(N,S,S) uint8 labels",
};

impl StageKind for Split {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "split",
            version: 2,
            about: "train/validation split and preprocessing: validation from MedSeg (or the image folder) only, k folds, Radiopaedia always in train",
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
                    about: "images_radiopedia.npy (training only)",
                },
                InputSpec {
                    name: "radiopedia_masks",
                    required: false,
                    about: "masks_radiopedia.npy (training only)",
                },
                InputSpec {
                    name: "folder",
                    required: false,
                    about: "an image-folder dataset (images/<id>.png|jpg, masks/<id>.png), instead of the .npy files",
                },
                InputSpec {
                    name: "volumes",
                    required: false,
                    about: "CT volumes in HU: a folder of .nii[.gz] (or one file), instead of the .npy files; folds split by volume",
                },
                InputSpec {
                    name: "volume_labels",
                    required: false,
                    about: "label volumes of the same names (image `<name>_0000` allowed), mapped by params.label_map",
                },
            ],
            outputs: &[
                SPLIT_MANIFEST,
                SPLIT_PREPROCESSING,
                SPLIT_TRAIN_IMAGES,
                SPLIT_TRAIN_LABELS,
                SPLIT_VAL_IMAGES,
                SPLIT_VAL_LABELS,
            ],
            uses_seed: true,
            resources: ALL_CPUS,
            golden: &[(2, "5cde47569dc9145a")],
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<split::SplitConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn check_inputs(&self, wired: &[&str], params: &serde_json::Value) -> Result<(), String> {
        let has = |n: &str| wired.contains(&n);
        let kaggle = has("medseg_images")
            || has("medseg_masks")
            || has("radiopedia_images")
            || has("radiopedia_masks");
        let volumes = has("volumes") || has("volume_labels");
        let given = [kaggle, has("folder"), volumes]
            .iter()
            .filter(|&&g| g)
            .count();
        if given > 1 {
            return Err(
                "give one dataset: the .npy inputs, `folder`, or `volumes` with `volume_labels`"
                    .into(),
            );
        }
        if volumes && !(has("volumes") && has("volume_labels")) {
            return Err("inputs `volumes` and `volume_labels` go together: give both".into());
        }
        let npy = has("medseg_images") && has("medseg_masks");
        if !has("folder") && !npy && !volumes {
            return Err("needs `medseg_images` and `medseg_masks` (the .npy files), `folder` (an image-folder dataset), or `volumes` and `volume_labels` (NIfTI volumes)".into());
        }
        if !volumes && params.get("pixel_mm").is_some_and(|v| !v.is_null()) {
            return Err("params.pixel_mm resamples CT volumes by their voxel size; the .npy files and image folders carry none: remove it, or train from `volumes`".into());
        }
        if has("radiopedia_images") != has("radiopedia_masks") {
            return Err("inputs `radiopedia_images` and `radiopedia_masks` go together: give both or neither".into());
        }
        Ok(())
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: split::SplitConfig = job.config()?;
        let inputs = match (job.input("folder"), job.input("volumes")) {
            (Some(root), _) => split::SplitInputs::Folder(root.to_owned()),
            (None, Some(images)) => split::SplitInputs::Volumes {
                images: images.to_owned(),
                labels: job.required("volume_labels")?.to_owned(),
            },
            (None, None) => split::SplitInputs::Kaggle {
                medseg_images: job.required("medseg_images")?.to_owned(),
                medseg_masks: job.required("medseg_masks")?.to_owned(),
                radiopedia: job
                    .input("radiopedia_images")
                    .zip(job.input("radiopedia_masks"))
                    .map(|(i, m)| (i.to_owned(), m.to_owned())),
            },
        };
        let data = split::assemble(&inputs, &config, job.seed, job.progress)?;
        split::write_manifest(&job.output(&SPLIT_MANIFEST), &data.manifest)?;
        write_json(&job.output(&SPLIT_PREPROCESSING), &data.preprocessing)?;
        npy::write(&job.output(&SPLIT_TRAIN_IMAGES), &data.train_images)?;
        npy::write(&job.output(&SPLIT_TRAIN_LABELS), &data.train_labels)?;
        npy::write(&job.output(&SPLIT_VAL_IMAGES), &data.val_images)?;
        npy::write(&job.output(&SPLIT_VAL_LABELS), &data.val_labels)?;
        Ok(())
    }
}
