//! An approximate lung mask from HU, united with the predicted lesions.
//!
//! Thresholding alone drops what covseg measures: dense ground glass and consolidation are well
//! above the −350 HU of aerated lung, and COVID-19 lesions sit at the pleura, where hole filling
//! cannot reach them (Mansoor et al., Radiographics 2015). So the lesions predicted by the model
//! are added before the mask is closed and filled, and every report marks the result as
//! heuristic. Steps, after Hu, Hoffman and Reinhardt (IEEE TMI 2001):
//! 1. the body: voxels above −500 HU, the largest component, holes filled slice by slice;
//! 2. aerated lung: −950 < HU < −350 inside the body (the trachea's lumen and outside air are
//!    darker than −950), components touching the slice border dropped, components under 2 % of
//!    the largest dropped;
//! 3. ∪ lesions, closed with a disk of 5 mm (narrower than the mediastinum) and filled slice by slice, kept inside the body;
//! 4. left and right: by which side of the mediastinum (the mask's centre in world x) a voxel is.

use ndarray::{Array3, Zip};

use super::Volume;
use super::morphology::{close_slices, components, fill_holes_slices};

/// How the lung mask was made, for the report.
pub const METHOD: &str = "heuristic: HU threshold (−950 to −350) with connected components, \
     united with the predicted lesions, closed (5 mm) and hole-filled; approximate";

const CLOSING_MM: f64 = 5.0;

/// The lungs, and which lung voxels are on the patient's right.
#[derive(Debug, Clone)]
pub struct LungMask {
    pub lung: Array3<bool>,
    pub right: Array3<bool>,
}

/// The lung mask of `volume` given the predicted `lesions` (same shape).
pub fn lung_mask(volume: &Volume, lesions: &Array3<bool>) -> LungMask {
    let hu = &volume.hu;
    let spacing = volume.spacing();
    let in_plane = [spacing[0], spacing[1]];
    // 1. The body.
    let dense = hu.mapv(|v| v > -500.0);
    let mut body = largest(&dense);
    fill_holes_slices(&mut body);
    // 2. Aerated lung.
    let mut air = Array3::from_elem(hu.raw_dim(), false);
    Zip::from(&mut air)
        .and(hu)
        .and(&body)
        .for_each(|a, &v, &b| *a = b && v > -950.0 && v < -350.0);
    let (labels, sizes) = components(&air);
    let (ni, nj, _) = hu.dim();
    let mut touches = vec![false; sizes.len()];
    for ((i, j, _), &l) in labels.indexed_iter() {
        if l != 0 && (i == 0 || j == 0 || i + 1 == ni || j + 1 == nj) {
            touches[l as usize] = true;
        }
    }
    let biggest = sizes
        .iter()
        .enumerate()
        .filter(|(l, _)| *l > 0 && !touches[*l])
        .map(|(_, s)| *s)
        .max()
        .unwrap_or(0);
    let keep: Vec<bool> = sizes
        .iter()
        .enumerate()
        .map(|(l, &s)| l > 0 && !touches[l] && s * 50 >= biggest && s > 0)
        .collect();
    let mut lung = labels.mapv(|l| keep[l as usize]);
    // 3. ∪ lesions, closed and filled, inside the body.
    Zip::from(&mut lung)
        .and(lesions)
        .for_each(|l, &lesion| *l |= lesion);
    close_slices(&mut lung, in_plane, CLOSING_MM);
    fill_holes_slices(&mut lung);
    Zip::from(&mut lung).and(&body).for_each(|l, &b| *l &= b);
    // 4. Right and left by world x (RAS+: +x is the patient's right).
    let xs: Vec<f64> = lung
        .indexed_iter()
        .filter(|(_, v)| **v)
        .map(|((i, j, k), _)| volume.affine.apply([i as f64, j as f64, k as f64])[0])
        .collect();
    let midline = if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    };
    let mut right = Array3::from_elem(hu.raw_dim(), false);
    for ((i, j, k), r) in right.indexed_iter_mut() {
        *r = lung[(i, j, k)] && volume.affine.apply([i as f64, j as f64, k as f64])[0] > midline;
    }
    LungMask { lung, right }
}

/// The largest 6-connected component of `mask`.
fn largest(mask: &Array3<bool>) -> Array3<bool> {
    let (labels, sizes) = components(mask);
    let Some((best, _)) = sizes.iter().enumerate().skip(1).max_by_key(|(_, s)| **s) else {
        return mask.clone();
    };
    labels.mapv(|l| l as usize == best)
}
