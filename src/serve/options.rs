//! `covseg serve`'s flags.

use std::path::PathBuf;

use clap::Args;
use covseg_stages::predict::Tta;
use covseg_stages::training::DeviceChoice;

/// Where SageMaker unpacks a model (`ModelDataUrl`) before it starts the container.
pub const SAGEMAKER_MODEL_DIR: &str = "/opt/ml/model";

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A bundle folder (from train or evaluate). Without it, `--stage` names one; with neither,
    /// /opt/ml/model is served (SageMaker's bring-your-own-container contract: `docker run IMAGE
    /// serve`). A bare `serve` is accepted as that contract's argument.
    #[arg(value_name = "BUNDLE")]
    pub bundle: Option<PathBuf>,
    /// Serve the pipeline's current bundle of this stage (train, train-final, evaluate).
    #[arg(long, value_name = "STAGE", conflicts_with = "bundle")]
    pub stage: Option<String>,
    /// An evaluate stage's thresholds.json, used instead of the bundle's.
    #[arg(long, value_name = "FILE")]
    pub thresholds: Option<PathBuf>,
    /// Address to listen on (0.0.0.0 in a container; SageMaker mode defaults to it).
    #[arg(long)]
    pub host: Option<String>,
    /// Port (default 8080, or SAGEMAKER_BIND_TO_PORT).
    #[arg(long)]
    pub port: Option<u16>,
    /// Where the model runs.
    #[arg(long, value_parser = parse_device, default_value = "auto")]
    pub device: DeviceChoice,
    /// Test-time augmentation: none, flip2, flip4.
    #[arg(long, value_parser = parse_tta, default_value = "none")]
    pub tta: Tta,
    /// Largest request body, in bytes (SageMaker's real-time limit is about 6 MB).
    #[arg(long, value_name = "BYTES", default_value_t = 6 << 20)]
    pub max_body: usize,
    /// Largest slice width and height, in pixels.
    #[arg(long, value_name = "PIXELS", default_value_t = 2048)]
    pub max_side: usize,
    /// Requests that may wait for the model; more are answered 503 with Retry-After at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub queue: usize,
    /// Most slices per forward pass.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_batch: usize,
    /// Longest wait to fill a batch while requests arrive faster than the model (an idle model
    /// never waits).
    #[arg(long, value_name = "MS", default_value_t = 5)]
    pub max_delay_ms: u64,
    /// Whole-request limit, in seconds (default 60, or SAGEMAKER_MODEL_SERVER_TIMEOUT).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Limit for reading a request's headers, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub header_timeout: u64,
    /// Limit for receiving a request's body, and for a client to take each part of its answer,
    /// in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub body_timeout: u64,
    /// Most open connections; further clients wait in the kernel's backlog.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections: usize,
    /// Largest CT volume upload (`/v1/volume`: a `.nii[.gz]` or a zipped DICOM series), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 512 << 20)]
    pub max_volume_body: usize,
    /// Most slices in an uploaded volume.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_volume_slices: usize,
    /// Whole-request limit for a volume (upload, model, answer), in seconds. One volume is
    /// segmented at a time; slice requests are served between its batches.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    pub volume_timeout: u64,
    /// Pixel spacing in mm (`0.7` or `0.7,0.7`) for the areas in JSON answers, unless a request
    /// gives its own (`?spacing=`).
    #[arg(long, value_name = "MM")]
    pub spacing: Option<String>,
}

fn parse_device(text: &str) -> Result<DeviceChoice, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("`{text}`: expected auto, cpu, wgpu or cuda"))
}

fn parse_tta(text: &str) -> Result<Tta, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("`{text}`: expected none, flip2 or flip4"))
}
