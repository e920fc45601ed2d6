//! Writing and reading plain `.npy` arrays of any shape (stage artifacts), with errors that name
//! the file.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use ndarray::{ArrayBase, Data, Dimension};
use ndarray_npy::{ReadNpyExt, ReadableElement, WritableElement, WriteNpyExt};

use crate::{Error, Result};

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

/// Reads a `.npy` array of a known element type and dimensionality.
pub fn read<A, D>(path: &Path) -> Result<ndarray::Array<A, D>>
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
