//! The `synth-volumes` kind: phantom CT volumes, each as a NIfTI file and as a DICOM series, with
//! their true label maps and the truth of the volume report.

use covseg_stages::data::phantom;

use super::{ALL_CPUS, write_json};
use crate::pipeline::kind::{
    KindSpec, OutputSpec, ParamError, StageFailure, StageJob, StageKind, typed_params,
};

pub(super) struct SynthVolumes;

const NIFTI: OutputSpec = OutputSpec {
    name: "nifti",
    file: "nifti",
    about: "folder: <name>.nii.gz, int16 HU (RAS+ affine)",
};
const LABELS: OutputSpec = OutputSpec {
    name: "labels",
    file: "labels",
    about: "folder: <name>.nii.gz, uint8 truth: 0 background, 1 GGO, 2 consolidation, 3 other lung",
};
const DICOM: OutputSpec = OutputSpec {
    name: "dicom",
    file: "dicom",
    about: "folder: <name>/IM0001.dcm… one CT series per volume (explicit VR little endian)",
};
const TRUTH: OutputSpec = OutputSpec {
    name: "truth",
    file: "truth.json",
    about: "the volume report of each volume's true labels: lesion and lung mL, involvement %, MosMed grade",
};

impl StageKind for SynthVolumes {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "synth-volumes",
            version: 1,
            about: "synthetic CT volumes (stacked phantoms, lesions continuous in z) as NIfTI and DICOM series, with true labels and the true report",
            inputs: &[],
            outputs: &[NIFTI, LABELS, DICOM, TRUTH],
            uses_seed: true,
            resources: ALL_CPUS,
            golden: &[(1, "ac766484a109830a")],
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<phantom::VolumePhantomConfig>(raw, |c| {
            c.validate().map_err(|e| e.to_string())
        })
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: phantom::VolumePhantomConfig = job.config()?;
        let paths = phantom::VolumeSetPaths {
            nifti: job.output(&NIFTI),
            labels: job.output(&LABELS),
            dicom: job.output(&DICOM),
        };
        let truth = phantom::write_volume_set(&config, job.seed, &paths, job.progress)?;
        write_json(
            &job.output(&TRUTH),
            &serde_json::json!({ "volumes": truth }),
        )?;
        for t in &truth {
            tracing::info!(
                volume = %t.volume,
                involvement = t.involvement_percent.whole,
                grade = %t.mosmed_grade,
                "phantom volume"
            );
        }
        Ok(())
    }
}
