//! Image-folder datasets: `images/<id>.png|jpg` with `masks/<id>.png` of integer labels, any size,
//! grey, RGB or RGBA (reduced to grey). Ids are listed in natural order (2 before 10).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::labels::{LABEL_BACKGROUND, LABEL_CONSOLIDATION, LABEL_GGO, LABEL_OTHER_LUNG};
use crate::{Error, Result};

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Which mask values mean what; every other value is an error, so a wrong map never passes silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelMap {
    pub background: u8,
    pub ggo: u8,
    pub consolidation: u8,
    /// The value of lung that is neither (the Kaggle masks' "other lung"), where labels have it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lung: Option<u8>,
}

impl Default for LabelMap {
    fn default() -> Self {
        Self {
            background: 0,
            ggo: 1,
            consolidation: 2,
            lung: None,
        }
    }
}

impl LabelMap {
    /// Stored value → covseg label.
    pub fn table(&self) -> BTreeMap<u8, u8> {
        let mut table = BTreeMap::from([
            (self.background, LABEL_BACKGROUND),
            (self.ggo, LABEL_GGO),
            (self.consolidation, LABEL_CONSOLIDATION),
        ]);
        if let Some(lung) = self.lung {
            table.insert(lung, LABEL_OTHER_LUNG);
        }
        table
    }

    /// `background 0, ggo 1, consolidation 2[, lung 3]`, for messages.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "background {}, ggo {}, consolidation {}",
            self.background, self.ggo, self.consolidation
        );
        if let Some(lung) = self.lung {
            text.push_str(&format!(", lung {lung}"));
        }
        text
    }
}

/// One slice of a folder dataset at its original size.
#[derive(Debug, Clone)]
pub struct FolderSlice {
    pub id: String,
    /// Grey values 0…255.
    pub image: Array2<f32>,
    /// Labels in covseg's convention (0 background, 1 GGO, 2 consolidation).
    pub labels: Array2<u8>,
}

/// Natural order: digit runs compare as numbers.
fn natural_key(id: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut chars = id.chars().peekable();
    while let Some(&c) = chars.peek() {
        let digits = c.is_ascii_digit();
        let mut run = String::new();
        while let Some(&d) = chars.peek() {
            if d.is_ascii_digit() != digits {
                break;
            }
            run.push(d);
            chars.next();
        }
        key.push(if digits {
            (run.parse().unwrap_or(u64::MAX), String::new())
        } else {
            (u64::MAX, run)
        });
    }
    key
}

/// The png/jpg images directly in `dir` as (id, path), in natural id order; an id may appear once.
fn scan(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if IMAGE_EXTENSIONS.contains(&ext.as_str())
            && let Some(stem) = path.file_stem()
        {
            found.push((stem.to_string_lossy().into_owned(), path));
        }
    }
    found.sort_by_key(|(id, _)| natural_key(id));
    if let Some(pair) = found.windows(2).find(|p| p[0].0 == p[1].0) {
        return Err(Error::invalid_data(
            &pair[1].1,
            format!(
                "id {} appears twice in {} (keep one file per id)",
                pair[0].0,
                dir.display()
            ),
        ));
    }
    Ok(found)
}

/// The images to predict in a folder: `root/images/` when it exists, else `root` itself.
pub fn list_images(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let images = root.join("images");
    let dir = if images.is_dir() {
        images
    } else {
        root.to_path_buf()
    };
    let found = scan(&dir)?;
    if found.is_empty() {
        return Err(Error::invalid_data(&dir, "holds no .png or .jpg images"));
    }
    Ok(found)
}

/// One image reduced to grey (luma), values 0…255.
pub fn read_grey(path: &Path) -> Result<Array2<f32>> {
    let grey = decode(path)?.to_luma8();
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    Ok(Array2::from_shape_vec((h, w), grey.into_raw())
        .expect("h×w pixels")
        .mapv(f32::from))
}

/// The ids of `root/images`, each with its image path; every one must have `root/masks/<id>.png`.
pub fn list(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let images = root.join("images");
    let found = scan(&images)?;
    if found.is_empty() {
        return Err(Error::invalid_data(
            &images,
            "holds no .png or .jpg images; an image-folder dataset needs images/<id>.png|jpg and masks/<id>.png",
        ));
    }
    for (id, _) in &found {
        let mask = root.join("masks").join(format!("{id}.png"));
        if !mask.is_file() {
            return Err(Error::invalid_data(
                &mask,
                format!("is missing: every image needs a mask with the same id ({id})"),
            ));
        }
    }
    Ok(found)
}

/// The most bytes a decoder may allocate for a file of `len` bytes: DEFLATE expands at most
/// ~1032:1 and baseline JPEG about as much, so a header declaring more pixels than that is a damaged
/// (or hostile) file, refused before its buffer is allocated.
pub fn decode_budget(len: u64) -> u64 {
    len.saturating_mul(1100)
        .saturating_add(1 << 20)
        .min(1 << 30)
}

fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| Error::io(path, e))
}

fn decode(path: &Path) -> Result<image::DynamicImage> {
    let budget = decode_budget(file_len(path)?);
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(budget);
    reader.limits(limits);
    reader.decode().map_err(|e| {
        let why = match &e {
            image::ImageError::Limits(_) => format!(
                "its header declares more pixels than a file of this size can hold (decoding \
                 would need more than {budget} bytes): damaged or not an image"
            ),
            other => format!("cannot decode the image: {other}"),
        };
        Error::invalid_data(path, why)
    })
}

/// The raw values of a single-channel mask PNG: palette indices for palette images (a decoder that
/// expands the palette would give colours, not labels), grey levels for grey ones.
fn mask_values(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let bad = |m: String| Error::invalid_data(path, m);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad(format!("cannot decode the mask PNG: {e}")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("mask PNG too large".into()))?;
    let budget = decode_budget(file_len(path)?);
    if size as u64 > budget {
        let info = reader.info();
        return Err(bad(format!(
            "its header declares {}×{} pixels ({size} bytes decoded), more than a file of this \
             size can hold (at most {budget}): damaged or not a PNG",
            info.width, info.height
        )));
    }
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("cannot decode the mask PNG: {e}")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let bits = match (info.color_type, info.bit_depth) {
        (png::ColorType::Indexed | png::ColorType::Grayscale, depth) => depth as usize,
        (other, _) => {
            return Err(bad(format!(
                "masks must be single-channel label images (grey or palette), this one is {other:?}"
            )));
        }
    };
    let mut values = Vec::with_capacity(w * h);
    for row in buf.chunks(info.line_size).take(h) {
        match bits {
            8 => values.extend_from_slice(&row[..w]),
            16 => {
                for px in row.chunks(2).take(w) {
                    let v = u16::from_be_bytes([px[0], px[1]]);
                    values.push(u8::try_from(v).map_err(|_| {
                        bad(format!(
                            "holds the label value {v}; labels must be below 256"
                        ))
                    })?);
                }
            }
            b => {
                let per_byte = 8 / b;
                let mask = (1u8 << b) - 1;
                values.extend(
                    (0..w).map(|x| (row[x / per_byte] >> (8 - b * (x % per_byte + 1))) & mask),
                );
            }
        }
    }
    Ok((w, h, values))
}

/// Reads one slice: the image reduced to grey (luma), the mask mapped through `map`.
pub fn read(root: &Path, id: &str, image_path: &Path, map: &LabelMap) -> Result<FolderSlice> {
    let grey = decode(image_path)?.to_luma8();
    let mask_path = root.join("masks").join(format!("{id}.png"));
    let (mw, mh, values) = mask_values(&mask_path)?;
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    if (w, h) != (mw, mh) {
        return Err(Error::invalid_data(
            &mask_path,
            format!(
                "is {mw}×{mh} but its image {} is {w}×{h}",
                image_path.display()
            ),
        ));
    }
    let table = map.table();
    let mut labels = Array2::zeros((h, w));
    for (i, &v) in values.iter().enumerate() {
        labels[[i / w, i % w]] = *table.get(&v).ok_or_else(|| {
            Error::invalid_data(
                &mask_path,
                format!(
                    "holds the value {v}, which params.label_map does not name ({})",
                    map.describe()
                ),
            )
        })?;
    }
    let image = Array2::from_shape_vec(
        (h, w),
        grey.as_raw().iter().map(|&v| f32::from(v)).collect(),
    )
    .map_err(|e| Error::invalid_data(image_path, e.to_string()))?;
    Ok(FolderSlice {
        id: id.to_owned(),
        image,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_dataset(root: &Path, ids: &[&str]) {
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(root.join("masks")).unwrap();
        for id in ids {
            let img = image::RgbImage::from_fn(6, 4, |x, y| {
                image::Rgb([(x * 40) as u8, (y * 60) as u8, 0])
            });
            img.save(root.join("images").join(format!("{id}.png")))
                .unwrap();
            let mask = image::GrayImage::from_fn(6, 4, |x, _| image::Luma([(x % 3) as u8]));
            mask.save(root.join("masks").join(format!("{id}.png")))
                .unwrap();
        }
    }

    #[test]
    fn lists_in_natural_order_and_reads_rgb_as_grey() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), &["10", "2", "1"]);
        let ids: Vec<String> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, ["1", "2", "10"]);
        let (id, path) = &list(dir.path()).unwrap()[0];
        let slice = read(dir.path(), id, path, &LabelMap::default()).unwrap();
        assert_eq!(slice.image.dim(), (4, 6));
        assert_eq!(slice.labels[[0, 1]], LABEL_GGO);
        assert_eq!(slice.labels[[0, 2]], LABEL_CONSOLIDATION);
        assert!(slice.image[[3, 5]] > slice.image[[0, 0]]);
    }

    #[test]
    fn every_problem_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        assert!(
            list(dir.path())
                .unwrap_err()
                .to_string()
                .contains("holds no .png or .jpg images")
        );
        write_dataset(dir.path(), &["1"]);
        image::GrayImage::new(3, 3)
            .save(dir.path().join("images/2.png"))
            .unwrap();
        assert!(
            list(dir.path())
                .unwrap_err()
                .to_string()
                .contains("masks/2.png: is missing")
        );
        image::GrayImage::new(4, 3)
            .save(dir.path().join("masks/2.png"))
            .unwrap();
        let (_, path) = &list(dir.path()).unwrap()[1];
        assert!(
            read(dir.path(), "2", path, &LabelMap::default())
                .unwrap_err()
                .to_string()
                .contains("is 4×3 but its image")
        );
        let odd = LabelMap {
            background: 0,
            ggo: 5,
            consolidation: 6,
            lung: None,
        };
        let (_, path) = &list(dir.path()).unwrap()[0];
        assert!(
            read(dir.path(), "1", path, &odd)
                .unwrap_err()
                .to_string()
                .contains("holds the value 1")
        );
        std::fs::write(dir.path().join("images/1.png"), b"not a png").unwrap();
        assert!(
            read(dir.path(), "1", path, &LabelMap::default())
                .unwrap_err()
                .to_string()
                .contains("cannot decode")
        );
        write_dataset(dir.path(), &["1"]);
        image::RgbImage::new(6, 4)
            .save(dir.path().join("masks/1.png"))
            .unwrap();
        assert!(
            read(dir.path(), "1", path, &LabelMap::default())
                .unwrap_err()
                .to_string()
                .contains("single-channel")
        );
    }
}

#[cfg(test)]
mod real_data {
    use super::*;

    /// The 50 real slices in ../shared, when present: palette masks must give labels 0, 1, 2.
    #[test]
    #[cfg_attr(
        not(covseg_shared),
        ignore = "needs ../shared, absent when this crate was built (touch stages/prerequisites.rs after adding it)"
    )]
    fn reads_the_shared_semiseg_slices() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/medseg-covid-semiseg-train");
        assert!(
            root.is_dir(),
            "{} is absent (the shared real-data folder)",
            root.display()
        );
        let ids = list(&root).unwrap();
        assert_eq!(ids.len(), 50);
        let mut seen = [0usize; 3];
        for (id, path) in ids.iter().take(10) {
            let slice = read(&root, id, path, &LabelMap::default()).unwrap();
            for &l in &slice.labels {
                seen[l as usize] += 1;
            }
        }
        assert!(
            seen.iter().all(|&n| n > 0),
            "background, GGO and consolidation all occur: {seen:?}"
        );
    }
}
