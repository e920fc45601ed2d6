//! Segmentation metrics: pixel F1 (Dice) per class over all evaluated pixels — the Kaggle score is
//! the mean of the GGO and consolidation F1 — plus per-image mean Dice (the convention of published
//! COVID-SemiSeg tables: a slice where truth and prediction are both empty scores 1), precision,
//! recall and IoU.

use ndarray::{Array4, ArrayView3, ArrayView4, Axis, Zip};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Pixel counts of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
}

/// `num / den`, where an empty denominator means "nothing to get wrong": 1.
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

impl Counts {
    pub fn of(pred: impl IntoIterator<Item = bool>, truth: impl IntoIterator<Item = bool>) -> Self {
        let mut c = Self::default();
        for (p, t) in pred.into_iter().zip(truth) {
            match (p, t) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    pub fn merge(self, o: Self) -> Self {
        Self {
            tp: self.tp + o.tp,
            fp: self.fp + o.fp,
            fn_: self.fn_ + o.fn_,
            tn: self.tn + o.tn,
        }
    }

    /// F1 = Dice = 2TP / (2TP + FP + FN); 1 when truth and prediction are both empty.
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    pub fn iou(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp + self.fn_)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    pub iou: f64,
    /// Mean over slices of each slice's Dice (both empty → 1).
    pub per_image_dice: f64,
    pub counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub slices: usize,
    /// Mean pixel F1 of the scored classes (GGO and consolidation): the competition's score.
    pub score: f64,
    pub classes: Vec<ClassMetrics>,
}

/// The names of the two scored classes, in channel order (as the submission's c = 0, 1).
pub const CLASSES: [&str; 2] = ["ggo", "consolidation"];

/// Per-class binary masks `(N,K,H,W)` from labels `(N,H,W)`: channel k is `labels == values[k]`.
pub fn masks_from_labels(labels: ArrayView3<u8>, values: &[u8]) -> Array4<bool> {
    let (n, h, w) = labels.dim();
    Array4::from_shape_fn((n, values.len(), h, w), |(i, k, y, x)| {
        labels[[i, y, x]] == values[k]
    })
}

/// Metrics of predicted masks against the truth, both `(N,K,H,W)` with K classes named `names`.
///
/// # Panics
/// When the shapes differ or `names` does not have K entries (a caller bug, not user input).
pub fn evaluate(pred: ArrayView4<bool>, truth: ArrayView4<bool>, names: &[&str]) -> Metrics {
    assert_eq!(
        pred.dim(),
        truth.dim(),
        "prediction and truth shapes differ"
    );
    assert_eq!(pred.dim().1, names.len(), "one name per class");
    let per_slice: Vec<Vec<Counts>> = (0..pred.dim().0)
        .into_par_iter()
        .map(|i| {
            let (p, t) = (pred.index_axis(Axis(0), i), truth.index_axis(Axis(0), i));
            (0..names.len())
                .map(|k| slice_counts(p.index_axis(Axis(0), k), t.index_axis(Axis(0), k)))
                .collect()
        })
        .collect();
    let classes: Vec<ClassMetrics> = names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let total = per_slice
                .iter()
                .map(|s| s[k])
                .fold(Counts::default(), Counts::merge);
            let per_image_dice = if per_slice.is_empty() {
                1.0
            } else {
                per_slice.iter().map(|s| s[k].f1()).sum::<f64>() / per_slice.len() as f64
            };
            ClassMetrics {
                class: (*name).to_owned(),
                f1: total.f1(),
                precision: total.precision(),
                recall: total.recall(),
                iou: total.iou(),
                per_image_dice,
                counts: total,
            }
        })
        .collect();
    let scored: Vec<f64> = classes
        .iter()
        .filter(|c| CLASSES.contains(&c.class.as_str()))
        .map(|c| c.f1)
        .collect();
    let score = if scored.is_empty() {
        0.0
    } else {
        scored.iter().sum::<f64>() / scored.len() as f64
    };
    Metrics {
        slices: per_slice.len(),
        score,
        classes,
    }
}

fn slice_counts(p: ndarray::ArrayView2<bool>, t: ndarray::ArrayView2<bool>) -> Counts {
    let mut c = Counts::default();
    Zip::from(&p).and(&t).for_each(|&p, &t| match (p, t) {
        (true, true) => c.tp += 1,
        (true, false) => c.fp += 1,
        (false, true) => c.fn_ += 1,
        (false, false) => c.tn += 1,
    });
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, Array4};

    fn masks(rows: &[&str]) -> Array4<bool> {
        // One slice, one class, rows of '#' (set) and '.'.
        let (h, w) = (rows.len(), rows[0].len());
        Array4::from_shape_fn((1, 1, h, w), |(_, _, y, x)| rows[y].as_bytes()[x] == b'#')
    }

    #[test]
    fn hand_computed_case() {
        let truth = masks(&["##..", "##..", "....", "...."]);
        let pred = masks(&["#...", "##..", "#...", "...."]);
        // TP 3, FP 1, FN 1, TN 11.
        let m = evaluate(pred.view(), truth.view(), &["ggo"]);
        let c = &m.classes[0];
        assert_eq!(
            c.counts,
            Counts {
                tp: 3,
                fp: 1,
                fn_: 1,
                tn: 11
            }
        );
        assert!((c.f1 - 6.0 / 8.0).abs() < 1e-12);
        assert!((c.precision - 0.75).abs() < 1e-12);
        assert!((c.recall - 0.75).abs() < 1e-12);
        assert!((c.iou - 3.0 / 5.0).abs() < 1e-12);
        assert!(
            (m.score - 0.75).abs() < 1e-12,
            "one scored class: the score is its F1"
        );
    }

    #[test]
    fn empty_slices_score_one_per_image_but_not_in_the_pixel_sum() {
        // Slice 0: truth 4 pixels, prediction none (Dice 0). Slice 1: both empty (Dice 1).
        let mut truth = Array4::from_elem((2, 1, 4, 4), false);
        truth.slice_mut(ndarray::s![0, 0, 0..2, 0..2]).fill(true);
        let pred = Array4::from_elem((2, 1, 4, 4), false);
        let m = evaluate(pred.view(), truth.view(), &["consolidation"]);
        assert_eq!(m.classes[0].f1, 0.0);
        assert_eq!(m.classes[0].per_image_dice, 0.5);
        let none = Array4::from_elem((1, 1, 2, 2), false);
        assert_eq!(
            evaluate(none.view(), none.view(), &["ggo"]).classes[0].f1,
            1.0,
            "nothing to find, nothing found"
        );
    }

    #[test]
    fn score_is_the_mean_of_ggo_and_consolidation_only() {
        let labels = Array3::from_shape_vec((1, 1, 4), vec![1, 2, 3, 0]).unwrap();
        let truth = masks_from_labels(labels.view(), &[1, 2, 3]);
        let mut pred = truth.clone();
        pred[[0, 1, 0, 1]] = false; // consolidation missed: F1 0
        pred[[0, 2, 0, 2]] = false; // other lung missed: not scored
        let m = evaluate(
            pred.view(),
            truth.view(),
            &["ggo", "consolidation", "other_lung"],
        );
        assert_eq!(m.score, 0.5);
    }
}
