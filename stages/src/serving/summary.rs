//! The numbers of a segmented slice: pixels per class, their area when the pixel spacing is known,
//! and the share of the slice that is lesion.

use ndarray::Array2;
use serde::Serialize;

/// Per-class values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerClass<T> {
    pub ggo: T,
    pub consolidation: T,
}

/// One slice's summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SliceSummary {
    pub height: usize,
    pub width: usize,
    /// Pixels of each class in the label image.
    pub pixels: PerClass<u64>,
    /// Area of each class in mm², when the pixel spacing is known.
    pub area_mm2: Option<PerClass<f64>>,
    /// Lesion pixels (GGO and consolidation) over all pixels of the slice.
    pub lesion_share: f64,
}

/// Summarises a label image; `spacing_mm` is (row, column) pixel spacing.
pub fn summarise(labels: &Array2<u8>, spacing_mm: Option<(f64, f64)>) -> SliceSummary {
    let (height, width) = labels.dim();
    let mut counts = [0u64; 3];
    for &v in labels {
        counts[usize::from(v.min(2))] += 1;
    }
    let pixels = PerClass {
        ggo: counts[1],
        consolidation: counts[2],
    };
    let area_mm2 = spacing_mm.map(|(dy, dx)| PerClass {
        ggo: counts[1] as f64 * dy * dx,
        consolidation: counts[2] as f64 * dy * dx,
    });
    let total = (height * width).max(1) as f64;
    SliceSummary {
        height,
        width,
        pixels,
        area_mm2,
        lesion_share: (counts[1] + counts[2]) as f64 / total,
    }
}

/// Parses a pixel spacing given as `0.7` (square pixels) or `0.7,0.8` (rows, columns), in mm.
pub fn parse_spacing(text: &str) -> Result<(f64, f64), String> {
    let parts: Vec<&str> = text
        .split([',', 'x', ' '])
        .filter(|p| !p.is_empty())
        .collect();
    let value = |p: &str| -> Result<f64, String> {
        match p.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v < 100.0 => Ok(v),
            _ => Err(format!(
                "spacing `{text}`: expected millimetres per pixel, e.g. 0.7 or 0.7,0.7"
            )),
        }
    };
    match parts.as_slice() {
        [one] => {
            let v = value(one)?;
            Ok((v, v))
        }
        [dy, dx] => Ok((value(dy)?, value(dx)?)),
        _ => Err(format!(
            "spacing `{text}`: expected millimetres per pixel, e.g. 0.7 or 0.7,0.7"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_areas_and_share() {
        let labels = Array2::from_shape_fn((4, 5), |(y, x)| match (y, x) {
            (0, _) => 1,
            (1, 0..2) => 2,
            _ => 0,
        });
        let s = summarise(&labels, Some((0.5, 2.0)));
        assert_eq!(
            s.pixels,
            PerClass {
                ggo: 5,
                consolidation: 2
            }
        );
        assert_eq!(
            s.area_mm2,
            Some(PerClass {
                ggo: 5.0,
                consolidation: 2.0
            })
        );
        assert!((s.lesion_share - 7.0 / 20.0).abs() < 1e-12);
        assert_eq!(summarise(&labels, None).area_mm2, None);
        assert_eq!(parse_spacing("0.7"), Ok((0.7, 0.7)));
        assert_eq!(parse_spacing("0.5,0.25"), Ok((0.5, 0.25)));
        assert!(parse_spacing("-1").is_err());
    }
}
