//! Which Burn device training runs on. GPU backends exist only in builds with the `wgpu` or
//! `cuda` feature; `auto` takes a real GPU when one answers, else the CPU, and says which.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A real GPU when covseg was built with the `cuda` or `wgpu` feature and one is present,
    /// else the CPU. Never a software (CPU) wgpu adapter.
    #[default]
    Auto,
    /// Burn's pure-Rust CPU backend (`flex`).
    Cpu,
    /// The first discrete GPU through wgpu; needs a build with the `wgpu` feature.
    Wgpu,
    /// CUDA device 0; needs a build with the `cuda` feature.
    Cuda,
}

/// The chosen device and how to name it in logs and metrics.
#[derive(Debug, Clone)]
pub struct TrainDevice {
    pub device: Device,
    /// `cpu (flex)`, `cuda:0`, `wgpu (discrete GPU 0)`.
    pub name: String,
    pub gpu: bool,
}

impl TrainDevice {
    fn cpu() -> Self {
        Self {
            device: Device::flex(),
            name: "cpu (flex)".into(),
            gpu: false,
        }
    }
}

/// Resolves the user's choice. A GPU named explicitly but not compiled in is a param error that
/// says how to build covseg with it.
pub fn select(choice: DeviceChoice) -> Result<TrainDevice> {
    match choice {
        DeviceChoice::Cpu => Ok(TrainDevice::cpu()),
        DeviceChoice::Cuda => cuda().ok_or_else(|| unavailable("cuda")),
        DeviceChoice::Wgpu => wgpu().ok_or_else(|| unavailable("wgpu")),
        DeviceChoice::Auto => Ok(cuda().or_else(wgpu).unwrap_or_else(TrainDevice::cpu)),
    }
}

/// The class of device a choice resolves to on this machine: `cpu`, `cuda` or `wgpu`. Results and
/// resumable checkpoints differ between classes (other kernels, other rounding), so the engine
/// keys on it: `auto` on a GPU machine and `auto` on a CPU machine are different results. `auto`
/// is probed once per process. A GPU named explicitly keys as that GPU whether or not it answers
/// (the run itself then fails with a clear message).
pub fn class(choice: DeviceChoice) -> &'static str {
    static AUTO: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    match choice {
        DeviceChoice::Cpu => "cpu",
        DeviceChoice::Cuda => "cuda",
        DeviceChoice::Wgpu => "wgpu",
        DeviceChoice::Auto => AUTO.get_or_init(|| {
            if cuda().is_some() {
                "cuda"
            } else if wgpu().is_some() {
                "wgpu"
            } else {
                "cpu"
            }
        }),
    }
}

/// What `auto` adds to its log line in a build without any GPU backend: how to get one.
pub fn auto_hint(choice: DeviceChoice) -> Option<&'static str> {
    let no_gpu_backend = !cfg!(any(feature = "wgpu", feature = "cuda"));
    (choice == DeviceChoice::Auto && no_gpu_backend).then_some(
        "this covseg has no GPU backend, so `auto` is the CPU: for an NVIDIA, AMD or Intel GPU, \
         build with `cargo build --release --features wgpu` (Vulkan)",
    )
}

/// Rejects a GPU backend this build lacks, before anything runs (params validation).
pub fn check_compiled(choice: DeviceChoice) -> Result<()> {
    match choice {
        DeviceChoice::Cuda if !cfg!(feature = "cuda") => Err(unavailable("cuda")),
        DeviceChoice::Wgpu if !cfg!(feature = "wgpu") => Err(unavailable("wgpu")),
        _ => Ok(()),
    }
}

fn unavailable(backend: &str) -> Error {
    let built = if cfg!(feature = "wgpu") && backend == "wgpu"
        || cfg!(feature = "cuda") && backend == "cuda"
    {
        format!("covseg was built with `{backend}` but found no usable GPU through it")
    } else {
        format!(
            "this covseg was built without the `{backend}` backend; rebuild with \
             `cargo build --release --features {backend}`"
        )
    };
    Error::invalid_param(
        "device",
        format!("{built}, or use device = \"cpu\" or \"auto\""),
    )
}

/// Runs a tiny sum on `device`; a backend that cannot start panics inside Burn, which is caught
/// here so `auto` can fall back to the CPU. A wrong sum (a broken adapter) also rejects it.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn answers(device: &Device) -> bool {
    use burn::tensor::Tensor;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Tensor::<1>::ones([64], device).sum().into_scalar::<f32>()
    }))
    .is_ok_and(|sum| sum == 64.0)
}

#[cfg(feature = "cuda")]
fn cuda() -> Option<TrainDevice> {
    // Without the driver's device node there is nothing to probe; probing would only panic.
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        return None;
    }
    let device = Device::cuda(0);
    answers(&device).then(|| TrainDevice {
        device,
        name: "cuda:0".into(),
        gpu: true,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Option<TrainDevice> {
    None
}

/// Only a *discrete* GPU: wgpu's default pick may be a software rasteriser (llvmpipe), which
/// runs on the CPU, slower than flex, and has computed wrong results.
#[cfg(feature = "wgpu")]
fn wgpu() -> Option<TrainDevice> {
    let device = Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(0));
    answers(&device).then(|| TrainDevice {
        device,
        name: "wgpu (discrete GPU 0)".into(),
        gpu: true,
    })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu() -> Option<TrainDevice> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_says_how_to_get_a_gpu_only_in_builds_without_one() {
        let hint = auto_hint(DeviceChoice::Auto);
        assert_eq!(
            hint.is_some(),
            !cfg!(any(feature = "wgpu", feature = "cuda"))
        );
        if let Some(hint) = hint {
            assert!(hint.contains("--features wgpu"), "{hint}");
        }
        assert_eq!(auto_hint(DeviceChoice::Cpu), None);
    }

    #[test]
    fn cpu_is_flex_and_auto_without_gpu_features_is_cpu() {
        let cpu = select(DeviceChoice::Cpu).unwrap();
        assert!(!cpu.gpu);
        assert_eq!(cpu.name, "cpu (flex)");
        if !cfg!(any(feature = "wgpu", feature = "cuda")) {
            assert!(!select(DeviceChoice::Auto).unwrap().gpu);
        }
    }

    #[test]
    fn classes_of_explicit_choices_and_of_auto() {
        assert_eq!(class(DeviceChoice::Cpu), "cpu");
        assert_eq!(class(DeviceChoice::Cuda), "cuda");
        assert_eq!(class(DeviceChoice::Wgpu), "wgpu");
        let auto = class(DeviceChoice::Auto);
        assert_eq!(auto == "cpu", !select(DeviceChoice::Auto).unwrap().gpu);
    }

    #[test]
    #[cfg(not(feature = "cuda"))]
    fn a_gpu_not_compiled_in_says_how_to_build_it() {
        let message = select(DeviceChoice::Cuda).unwrap_err().to_string();
        assert!(message.starts_with("params.device"), "{message}");
        assert!(message.contains("--features cuda"), "{message}");
    }
}
