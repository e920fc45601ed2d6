//! The one `.npy` reader and writer of covseg. Every read starts with [`Header::read`], which
//! parses the header and checks, with checked arithmetic, that the file holds exactly the bytes the
//! header's shape and dtype promise, before anything is allocated from the header: a 193-byte file
//! that declares 200 GB is an input error naming both sizes, never an allocation.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;

use ndarray::{ArrayBase, Data, Dimension};
use ndarray_npy::{ReadNpyExt, ReadableElement, WritableElement, WriteNpyExt};

use crate::{Error, Result};

/// Longest header accepted (numpy writes well under 4 KiB).
const MAX_HEADER: usize = 1 << 20;

/// What a `.npy` header says, checked against the file's length.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Where the array data starts.
    pub data_offset: u64,
    /// Bytes of one element (from `descr`).
    pub element_bytes: usize,
}

impl Header {
    /// Reads and checks the header of `path`: magic, version, a parsable dict, a known element
    /// size, and a file length equal to header + shape × element size.
    pub fn read(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let actual = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Self::parse(&mut BufReader::new(file), actual, path)
    }

    /// The same checks on a `.npy` held in memory (an upload); `name` labels the errors.
    pub fn from_bytes(bytes: &[u8], name: &Path) -> Result<Self> {
        Self::parse(&mut std::io::Cursor::new(bytes), bytes.len() as u64, name)
    }

    /// Parses a header from the start of `file`, whose whole length is `actual` bytes.
    fn parse(file: &mut impl Read, actual: u64, path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Npy {
            path: path.to_owned(),
            message,
        };
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic)
            .map_err(|_| bad("not a .npy file (too short)".into()))?;
        if &magic[..6] != b"\x93NUMPY" {
            return Err(bad("not a .npy file (bad magic bytes)".into()));
        }
        let (len, prefix) = match magic[6] {
            1 => {
                let mut b = [0u8; 2];
                file.read_exact(&mut b)
                    .map_err(|_| bad("truncated header".into()))?;
                (usize::from(u16::from_le_bytes(b)), 10u64)
            }
            2 | 3 => {
                let mut b = [0u8; 4];
                file.read_exact(&mut b)
                    .map_err(|_| bad("truncated header".into()))?;
                (u32::from_le_bytes(b) as usize, 12u64)
            }
            v => return Err(bad(format!("unsupported .npy format version {v}"))),
        };
        if len > MAX_HEADER {
            return Err(bad(format!("header of {len} bytes is longer than 1 MiB")));
        }
        if prefix + len as u64 > actual {
            return Err(bad(format!(
                "truncated header: it declares {len} bytes, the file has {actual} bytes in all"
            )));
        }
        let mut text = vec![0u8; len];
        file.read_exact(&mut text)
            .map_err(|_| bad("truncated header".into()))?;
        let text = String::from_utf8_lossy(&text);
        let field = |name: &str| -> Option<&str> {
            let start = text.find(&format!("'{name}'"))? + name.len() + 2;
            let rest = text[start..].trim_start().strip_prefix(':')?.trim_start();
            Some(rest)
        };
        let descr = field("descr")
            .and_then(|r| r.strip_prefix('\''))
            .and_then(|r| r.split('\'').next())
            .ok_or_else(|| bad("header has no 'descr'".into()))?
            .to_owned();
        let fortran_order = field("fortran_order").is_some_and(|r| r.starts_with("True"));
        let shape_text = field("shape")
            .and_then(|r| r.strip_prefix('('))
            .and_then(|r| r.split(')').next())
            .ok_or_else(|| bad("header has no 'shape'".into()))?;
        let shape = shape_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches('L').parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("header 'shape' is not a tuple of integers".into()))?;
        let element_bytes =
            element_bytes(&descr).ok_or_else(|| bad(format!("unsupported dtype '{descr}'")))?;
        let header = Self {
            descr,
            fortran_order,
            shape,
            data_offset: prefix + len as u64,
            element_bytes,
        };
        let data = header.data_bytes();
        let expected = data.and_then(|d| d.checked_add(header.data_offset));
        if expected != Some(actual) {
            let declared = data.map_or_else(
                || "more bytes than a file can hold".to_owned(),
                |d| format!("{d} bytes of data"),
            );
            let what = if expected.is_some_and(|e| actual > e) {
                "the file is longer than its header says"
            } else {
                "truncated, or the header is damaged"
            };
            return Err(bad(format!(
                "header declares shape {} of '{}' = {declared}, but the file holds {} bytes of \
                 data ({actual} bytes in all): {what}",
                header.shape_text(),
                header.descr,
                actual.saturating_sub(header.data_offset),
            )));
        }
        Ok(header)
    }

    /// Bytes of the array data the header promises; `None` when that overflows.
    pub fn data_bytes(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(self.element_bytes as u64, |acc, &d| {
                acc.checked_mul(d as u64)
            })
    }

    /// Number of elements (the header was checked against the file, so this fits in memory terms).
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// `(100,512,512,1)`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(ToString::to_string).collect();
        format!("({})", dims.join(","))
    }

    /// An input error about this file's shape, dtype or values.
    pub fn invalid(path: &Path, message: impl Into<String>) -> Error {
        Error::invalid_data(path, message)
    }
}

/// Element size of a numpy type string like `<f8`, `|b1`, `<u2`.
fn element_bytes(descr: &str) -> Option<usize> {
    let mut chars = descr.chars();
    let order = chars.next()?;
    if !matches!(order, '<' | '>' | '|' | '=') {
        return None;
    }
    let kind = chars.next()?;
    if !matches!(kind, 'b' | 'i' | 'u' | 'f' | 'c') {
        return None;
    }
    let size: usize = chars.as_str().parse().ok()?;
    matches!(size, 1 | 2 | 4 | 8 | 16).then_some(size)
}

/// Writes an array as `.npy`, synced to disk.
pub fn write<A, S, D>(path: &Path, array: &ArrayBase<S, D>) -> Result<()>
where
    A: WritableElement,
    S: Data<Elem = A>,
    D: Dimension,
{
    let mut writer =
        BufWriter::with_capacity(1 << 20, File::create(path).map_err(|e| Error::io(path, e))?);
    array.write_npy(&mut writer).map_err(|e| Error::Npy {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let file = writer
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Reads a `.npy` array of a known element type and dimensionality. The header is checked against
/// the file first, so the allocation is never larger than the file.
pub fn read<A, D>(path: &Path) -> Result<ndarray::Array<A, D>>
where
    A: ReadableElement,
    D: Dimension,
{
    let header = Header::read(path)?;
    if let Some(ndim) = D::NDIM
        && header.shape.len() != ndim
    {
        return Err(Error::invalid_data(
            path,
            format!(
                "array has shape {} ({} dimensions), expected {ndim} dimensions",
                header.shape_text(),
                header.shape.len()
            ),
        ));
    }
    read_checked(path, &header)
}

/// Reads an array whose header was already checked with [`Header::read`].
pub fn read_checked<A, D>(path: &Path, _header: &Header) -> Result<ndarray::Array<A, D>>
where
    A: ReadableElement,
    D: Dimension,
{
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ndarray::Array::<A, D>::read_npy(BufReader::new(file)).map_err(|e| Error::Npy {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bomb(dir: &Path) -> std::path::PathBuf {
        let mut dict =
            "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 512, 512, 1), }".to_owned();
        while !(10 + dict.len() + 1).is_multiple_of(64) {
            dict.push(' ');
        }
        dict.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        bytes.extend_from_slice(dict.as_bytes());
        bytes.extend_from_slice(&[0u8; 65]);
        let path = dir.join("bomb.npy");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_header_promising_more_than_the_file_holds_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = bomb(dir.path());
        let err = read::<f64, ndarray::Ix4>(&path).unwrap_err();
        assert!(err.is_input_error());
        let text = err.to_string();
        assert!(text.contains("bomb.npy"), "{text}");
        assert!(
            text.contains("shape (100000,512,512,1) of '<f8' = 209715200000 bytes of data"),
            "{text}"
        );
        assert!(text.contains("holds 65 bytes of data"), "{text}");
    }

    #[test]
    fn overflowing_shapes_and_extra_bytes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        write(&path, &ndarray::Array2::<f32>::zeros((3, 4))).unwrap();
        let header = Header::read(&path).unwrap();
        assert_eq!(header.shape, vec![3, 4]);
        assert_eq!(header.element_bytes, 4);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.push(0);
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            Header::read(&path)
                .unwrap_err()
                .to_string()
                .contains("longer than its header says")
        );
        let at = bytes.windows(6).position(|w| w == b"(3, 4)").unwrap();
        bytes.splice(at..at + 6, b"(18446744073709551615, 4)".iter().copied());
        std::fs::write(&path, &bytes).unwrap();
        let err = Header::read(&path).unwrap_err().to_string();
        assert!(err.contains("more bytes than a file can hold"), "{err}");
    }

    #[test]
    fn rank_mismatch_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flat.npy");
        write(&path, &ndarray::Array1::<f32>::zeros(5)).unwrap();
        let err = read::<f32, ndarray::Ix4>(&path).unwrap_err();
        assert!(err.is_input_error());
        assert!(
            err.to_string()
                .ends_with("flat.npy: array has shape (5) (1 dimensions), expected 4 dimensions"),
            "{err}"
        );
    }
}
