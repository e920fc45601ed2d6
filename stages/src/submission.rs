//! The Kaggle submission: predicted masks → the CSV `Id,Predicted`, one row per pixel and class,
//! with `Id = ((n·H + y)·W + x)·2 + c` (slice n, row y, column x, class c: 0 GGO, 1
//! consolidation) and `Predicted` 0 or 1, in increasing id order. For the 10 test slices of
//! 512×512 that is 5,242,880 rows.
//!
//! Rows are streamed (no row list in memory) and the written file is validated before it is
//! accepted: the header, the row count, every id once and in order, every value 0 or 1. The same
//! validator reads a plain or gzip CSV, so a file from elsewhere can be checked too.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use ndarray::ArrayView4;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub const HEADER: &str = "Id,Predicted";
/// Classes per pixel in the submission: GGO, consolidation.
pub const CLASSES: usize = 2;

/// How the CSV is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubmissionConfig {
    /// Compress the CSV with gzip (Kaggle accepts `.csv.gz`).
    pub gzip: bool,
    /// The slice size the competition expects; masks of another size are refused.
    pub size: usize,
}

impl Default for SubmissionConfig {
    fn default() -> Self {
        Self {
            gzip: false,
            size: 512,
        }
    }
}

impl SubmissionConfig {
    pub fn validate(&self) -> Result<()> {
        if self.size == 0 {
            return Err(Error::invalid_param("size", "expected a positive size"));
        }
        Ok(())
    }

    /// The file name of the CSV this config writes.
    pub fn file_name(&self) -> &'static str {
        if self.gzip {
            "submission.csv.gz"
        } else {
            "submission.csv"
        }
    }
}

/// What a written (or checked) submission holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub rows: u64,
    /// Rows predicted 1, per class.
    pub positive: [u64; CLASSES],
}

/// The id of (slice, row, column, class) in slices of `height`×`width`.
pub fn id(n: usize, y: usize, x: usize, c: usize, height: usize, width: usize) -> u64 {
    (((n * height + y) * width + x) * CLASSES + c) as u64
}

/// Writes `masks` `(N,H,W,2)` (channel 0 GGO, 1 consolidation) as the submission CSV at `path`
/// (gzip when `config.gzip`), then reads it back through [`validate`].
pub fn write(path: &Path, masks: ArrayView4<bool>, config: &SubmissionConfig) -> Result<Summary> {
    config.validate()?;
    let (n, h, w, c) = masks.dim();
    if c != CLASSES || h != config.size || w != config.size {
        return Err(Error::invalid_data(
            path,
            format!(
                "masks have shape ({n}, {h}, {w}, {c}); the submission needs (N, {s}, {s}, {CLASSES})",
                s = config.size
            ),
        ));
    }
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let sink: Box<dyn Write> = if config.gzip {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::default(),
        ))
    } else {
        Box::new(file)
    };
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    let io = |e| Error::io(path, e);
    writeln!(out, "{HEADER}").map_err(io)?;
    let mut ids = itoa::Buffer::new();
    let mut next = 0u64;
    for slice in masks.outer_iter() {
        for row in slice.outer_iter() {
            for pixel in row.outer_iter() {
                for &value in pixel {
                    out.write_all(ids.format(next).as_bytes()).map_err(io)?;
                    out.write_all(if value { b",1\n" } else { b",0\n" })
                        .map_err(io)?;
                    next += 1;
                }
            }
        }
    }
    let sink = out
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    drop(sink);
    let summary = validate(path, n * h * w * CLASSES)?;
    Ok(summary)
}

/// Checks a submission CSV (plain, or gzip by its magic bytes): the header, exactly
/// `expected_rows` rows with ids 0, 1, 2, … in order (so each id once), values 0 or 1.
/// The error names the line and what was wrong.
pub fn validate(path: &Path, expected_rows: usize) -> Result<Summary> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 2];
    let gzip = file.read(&mut magic).map_err(|e| Error::io(path, e))? == 2 && magic == [0x1f, 0x8b];
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let source: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut reader = BufReader::with_capacity(1 << 20, source);
    let bad =
        |line: u64, message: String| Error::invalid_data(path, format!("line {line}: {message}"));
    let mut line = Vec::with_capacity(32);
    let mut read = |line: &mut Vec<u8>| -> Result<bool> {
        line.clear();
        let n = reader
            .read_until(b'\n', line)
            .map_err(|e| Error::invalid_data(path, format!("unreadable: {e}")))?;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        Ok(n > 0)
    };
    if !read(&mut line)? || line != HEADER.as_bytes() {
        return Err(bad(
            1,
            format!(
                "expected the header `{HEADER}`, found `{}`",
                String::from_utf8_lossy(&line)
            ),
        ));
    }
    let mut summary = Summary {
        rows: 0,
        positive: [0; CLASSES],
    };
    let expected = expected_rows as u64;
    while read(&mut line)? {
        let number = summary.rows + 2;
        if summary.rows == expected {
            if line.is_empty() {
                continue;
            }
            return Err(bad(
                number,
                format!("more rows than the {expected} expected (one per pixel and class)"),
            ));
        }
        let text = std::str::from_utf8(&line).map_err(|_| bad(number, "not UTF-8 text".into()))?;
        let (id, value) = text
            .split_once(',')
            .ok_or_else(|| bad(number, format!("expected `Id,Predicted`, found `{text}`")))?;
        let id: u64 = id
            .parse()
            .map_err(|_| bad(number, format!("the id `{id}` is not a whole number")))?;
        if id != summary.rows {
            let what = if id < summary.rows {
                format!("id {id} again (or out of order)")
            } else {
                format!(
                    "id {id} where {} was expected (ids missing or out of order)",
                    summary.rows
                )
            };
            return Err(bad(number, what));
        }
        match value {
            "0" => {}
            "1" => summary.positive[(id % CLASSES as u64) as usize] += 1,
            other => {
                return Err(bad(
                    number,
                    format!("Predicted is `{other}`; it must be 0 or 1"),
                ));
            }
        }
        summary.rows += 1;
    }
    if summary.rows != expected {
        return Err(Error::invalid_data(
            path,
            format!(
                "{} rows, expected {expected} (slices × height × width × {CLASSES})",
                summary.rows
            ),
        ));
    }
    Ok(summary)
}

/// The first `lines` lines of a submission (plain or gzip), for a look at the head.
pub fn head(path: &Path, lines: usize) -> Result<String> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let source: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut text = String::new();
    for line in BufReader::new(source).lines().take(lines) {
        text.push_str(&line.map_err(|e| Error::io(path, e))?);
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn masks(n: usize, size: usize) -> Array4<bool> {
        Array4::from_shape_fn((n, size, size, 2), |(i, y, x, c)| {
            (i + y * 3 + x + c) % 5 == 0
        })
    }

    #[test]
    fn ids_follow_the_kaggle_formula_on_hand_picked_pixels() {
        // ((n·512 + y)·512 + x)·2 + c
        assert_eq!(id(0, 0, 0, 0, 512, 512), 0);
        assert_eq!(id(0, 0, 0, 1, 512, 512), 1);
        assert_eq!(id(0, 0, 1, 0, 512, 512), 2);
        assert_eq!(id(0, 1, 0, 0, 512, 512), 1024);
        assert_eq!(id(1, 0, 0, 0, 512, 512), 524_288);
        assert_eq!(id(9, 511, 511, 1, 512, 512), 5_242_879);
        assert_eq!(
            id(3, 100, 200, 1, 512, 512),
            ((3 * 512 + 100) * 512 + 200) * 2 + 1
        );
    }

    #[test]
    fn the_written_csv_puts_each_pixel_at_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        let mut m = Array4::from_elem((2, 8, 8, 2), false);
        m[(1, 2, 3, 1)] = true;
        m[(0, 7, 0, 0)] = true;
        let config = SubmissionConfig {
            size: 8,
            ..Default::default()
        };
        let summary = write(&path, m.view(), &config).unwrap();
        assert_eq!(summary.rows, 256);
        assert_eq!(summary.positive, [1, 1]);
        let text = std::fs::read_to_string(&path).unwrap();
        let ones: Vec<&str> = text.lines().filter(|l| l.ends_with(",1")).collect();
        assert_eq!(
            ones,
            [
                format!("{},1", id(0, 7, 0, 0, 8, 8)),
                format!("{},1", id(1, 2, 3, 1, 8, 8))
            ]
        );
    }

    #[test]
    fn gzip_holds_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let m = masks(2, 16);
        let plain = dir.path().join("s.csv");
        let gz = dir.path().join("s.csv.gz");
        let config = SubmissionConfig {
            size: 16,
            ..Default::default()
        };
        let a = write(&plain, m.view(), &config).unwrap();
        let b = write(
            &gz,
            m.view(),
            &SubmissionConfig {
                gzip: true,
                ..config
            },
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(head(&plain, 5).unwrap(), head(&gz, 5).unwrap());
        assert!(std::fs::metadata(&gz).unwrap().len() < std::fs::metadata(&plain).unwrap().len());
    }

    /// The head a person sees first: pixel (0,0,0) is GGO only, (0,0,1) consolidation only,
    /// (0,0,2) both.
    #[test]
    fn submission_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        let mut m = Array4::from_elem((1, 4, 4, 2), false);
        m[(0, 0, 0, 0)] = true;
        m[(0, 0, 1, 1)] = true;
        m[(0, 0, 2, 0)] = true;
        m[(0, 0, 2, 1)] = true;
        let config = SubmissionConfig {
            size: 4,
            ..Default::default()
        };
        write(&path, m.view(), &config).unwrap();
        insta::assert_snapshot!(head(&path, 9).unwrap());
    }

    fn error_for(text: &str, rows: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        std::fs::write(&path, text).unwrap();
        validate(&path, rows).unwrap_err().to_string()
    }

    #[test]
    fn the_validator_rejects_a_short_file() {
        let err = error_for("Id,Predicted\n0,0\n1,1\n", 4);
        assert!(
            err.ends_with("2 rows, expected 4 (slices × height × width × 2)"),
            "{err}"
        );
    }

    #[test]
    fn the_validator_rejects_a_duplicate_id() {
        let err = error_for("Id,Predicted\n0,0\n1,1\n1,0\n3,0\n", 4);
        assert!(
            err.ends_with("line 4: id 1 again (or out of order)"),
            "{err}"
        );
    }

    #[test]
    fn the_validator_rejects_a_value_of_2() {
        let err = error_for("Id,Predicted\n0,0\n1,2\n2,0\n3,0\n", 4);
        assert!(
            err.ends_with("line 3: Predicted is `2`; it must be 0 or 1"),
            "{err}"
        );
    }

    #[test]
    fn the_validator_rejects_a_wrong_header_and_extra_rows() {
        let err = error_for("id,predicted\n0,0\n", 1);
        assert!(
            err.contains("line 1: expected the header `Id,Predicted`"),
            "{err}"
        );
        let err = error_for("Id,Predicted\n0,0\n1,0\n", 1);
        assert!(
            err.contains("line 3: more rows than the 1 expected"),
            "{err}"
        );
        let err = error_for("Id,Predicted\n0,0\n2,0\n", 2);
        assert!(err.contains("line 3: id 2 where 1 was expected"), "{err}");
    }

    #[test]
    fn masks_of_the_wrong_size_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = write(
            &dir.path().join("s.csv"),
            masks(1, 16).view(),
            &SubmissionConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("the submission needs (N, 512, 512, 2)"),
            "{err}"
        );
    }
}
