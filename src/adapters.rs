//! The adapter table: the one place where engine stage kinds meet the domain crate's functions.
//! Each adapter declares inputs, outputs and params, and calls into `covseg_stages`.

use covseg_stages::data::{kaggle, phantom, split, stats};

use crate::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, Resources, StageFailure, StageJob, StageKind,
    typed_params,
};
use crate::registry::Registry;

/// Every stage kind covseg knows.
pub fn registry() -> Registry {
    Registry::new(vec![&Synth, &Split, &Stats])
}

/// Kinds whose work is spread over all the threads the engine gives them.
const ALL_CPUS: Resources = Resources {
    gpu: 0,
    cpu: u32::MAX,
};
const ONE_CPU: Resources = Resources { gpu: 0, cpu: 1 };

struct Synth;

const SYNTH_IMAGES: OutputSpec = OutputSpec {
    name: "images",
    file: "images.npy",
    about: "(N,S,S,1) float64 HU, Kaggle layout",
};
const SYNTH_MASKS: OutputSpec = OutputSpec {
    name: "masks",
    file: "masks.npy",
    about: "(N,S,S,4) bool: GGO, consolidation, other lung, background",
};

impl StageKind for Synth {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "synth",
            version: 1,
            about: "synthetic CT phantoms with GGO and consolidation, written as Kaggle-format .npy files",
            inputs: &[],
            outputs: &[SYNTH_IMAGES, SYNTH_MASKS],
            uses_seed: true,
            resources: ALL_CPUS,
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<phantom::PhantomConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: phantom::PhantomConfig = job.config()?;
        let set = phantom::generate(&config, job.seed, job.progress)?;
        kaggle::write_images(&job.output(&SYNTH_IMAGES), &set.images)?;
        kaggle::write_masks(&job.output(&SYNTH_MASKS), &set.masks)?;
        Ok(())
    }
}

struct Split;

const SPLIT_MANIFEST: OutputSpec = OutputSpec {
    name: "manifest",
    file: "splits.json",
    about: "folds and the chosen train/val slice lists",
};

impl StageKind for Split {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "split",
            version: 1,
            about: "train/validation split: validation from MedSeg only, k folds, Radiopaedia always in train",
            inputs: &[
                InputSpec {
                    name: "medseg_images",
                    required: true,
                    about: "images_medseg.npy or a synth stage's images",
                },
                InputSpec {
                    name: "medseg_masks",
                    required: true,
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
            ],
            outputs: &[SPLIT_MANIFEST],
            uses_seed: true,
            resources: ONE_CPU,
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<split::SplitConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: split::SplitConfig = job.config()?;
        let radiopedia = match (
            job.input("radiopedia_images"),
            job.input("radiopedia_masks"),
        ) {
            (Some(i), Some(m)) => Some((i.to_owned(), m.to_owned())),
            (None, None) => None,
            _ => {
                return Err(StageFailure {
                    message: "inputs radiopedia_images and radiopedia_masks go together: give both or neither".into(),
                    input_error: true,
                });
            }
        };
        let inputs = split::SplitInputs {
            medseg_images: job
                .input("medseg_images")
                .map(ToOwned::to_owned)
                .unwrap_or_default(),
            medseg_masks: job
                .input("medseg_masks")
                .map(ToOwned::to_owned)
                .unwrap_or_default(),
            radiopedia,
        };
        let manifest = split::split(&inputs, &config, job.seed)?;
        split::write_manifest(&job.output(&SPLIT_MANIFEST), &manifest)?;
        Ok(())
    }
}

struct Stats;

const STATS_REPORT: OutputSpec = OutputSpec {
    name: "report",
    file: "stats.json",
    about: "per class: pixel share, slices present, HU percentiles",
};

impl StageKind for Stats {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "stats",
            version: 1,
            about: "dataset statistics per mask class, of all slices or of one part of a split",
            inputs: &[
                InputSpec {
                    name: "images",
                    required: true,
                    about: "(N,H,W,1) HU images",
                },
                InputSpec {
                    name: "masks",
                    required: true,
                    about: "(N,H,W,4) masks",
                },
                InputSpec {
                    name: "manifest",
                    required: false,
                    about: "a split manifest, to describe only its train or val part",
                },
            ],
            outputs: &[STATS_REPORT],
            uses_seed: false,
            resources: ALL_CPUS,
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<stats::StatsConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: stats::StatsConfig = job.config()?;
        let (images, masks) = (job.required("images")?, job.required("masks")?);
        kaggle::check_pair(images, masks)?;
        let selection = match (job.input("manifest"), config.part) {
            (_, stats::Part::All) => None,
            (Some(m), part) => stats::select(&stats::read_manifest(m)?, part, &config.source),
            (None, _) => {
                return Err(StageFailure {
                    message: "params.part selects a split part, which needs the input `manifest`"
                        .into(),
                    input_error: true,
                });
            }
        };
        job.progress.start(2, "files");
        let images = kaggle::read_images(images)?;
        job.progress.advance(1);
        let masks = kaggle::read_masks(masks)?;
        job.progress.advance(1);
        let report = stats::compute(&images, &masks, selection.as_deref(), &config)?;
        let path = job.output(&STATS_REPORT);
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| StageFailure::internal(e.to_string()))?;
        std::fs::write(&path, text + "\n")
            .map_err(|e| StageFailure::internal(format!("{}: {e}", path.display())))
    }
}
