//! The `package-submission` kind: the validated Kaggle CSV.

use covseg_stages::data::npy;
use covseg_stages::submission;

use crate::pipeline::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, Resources, StageFailure, StageJob, StageKind,
    typed_params,
};

pub(super) struct PackageSubmission;

const SUBMISSION_OUT: OutputSpec = OutputSpec {
    name: "submission",
    file: "submission",
    about: "folder: submission.csv (or submission.csv.gz) with Id,Predicted, validated",
};
const SUBMISSION_SUMMARY: OutputSpec = OutputSpec {
    name: "summary",
    file: "summary.json",
    about: "the file name, rows and positive rows per class",
};

impl StageKind for PackageSubmission {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "package-submission",
            version: 1,
            about: "predicted masks → the Kaggle CSV Id,Predicted (Id = ((n·512+y)·512+x)·2+c), streamed and validated, optional gzip",
            inputs: &[InputSpec {
                name: "predictions",
                required: true,
                about: "a predict stage's predictions (its masks.npy), or a (N,512,512,2) bool .npy",
            }],
            outputs: &[SUBMISSION_OUT, SUBMISSION_SUMMARY],
            uses_seed: false,
            resources: Resources { gpu: 0, cpu: 1 },
            golden: &[(1, "a674b797459feeba")],
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<submission::SubmissionConfig>(raw, |c| {
            c.validate().map_err(|e| e.to_string())
        })
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: submission::SubmissionConfig = job.config()?;
        let input = job.required("predictions")?;
        let path = if input.is_dir() {
            input.join("masks.npy")
        } else {
            input.to_owned()
        };
        let masks: ndarray::Array4<bool> = npy::read(&path)?;
        let dir = job.output(&SUBMISSION_OUT);
        std::fs::create_dir_all(&dir)
            .map_err(|e| StageFailure::internal(format!("{}: {e}", dir.display())))?;
        let file = dir.join(config.file_name());
        let summary = submission::write(&file, masks.view(), &config)?;
        let record = serde_json::json!({
            "file": config.file_name(),
            "rows": summary.rows,
            "positive": { "ggo": summary.positive[0], "consolidation": summary.positive[1] },
        });
        let out = job.output(&SUBMISSION_SUMMARY);
        std::fs::write(&out, format!("{record:#}\n"))
            .map_err(|e| StageFailure::internal(format!("{}: {e}", out.display())))?;
        tracing::info!(
            "wrote {} ({} rows, validated)",
            config.file_name(),
            summary.rows
        );
        Ok(())
    }
}
