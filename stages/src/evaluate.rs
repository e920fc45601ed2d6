//! Evaluation of a trained bundle on the validation slices: the Kaggle metrics, a per-class
//! threshold chosen by a sweep (stored into a copy of the bundle for `predict`), the model's
//! time per slice, a per-slice CSV, and a report with the best and worst slices.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use ndarray::{Array3, Array4, ArrayView3, ArrayView4, Axis};
use serde::{Deserialize, Serialize};

use crate::metrics::{CLASSES, Counts, Metrics, evaluate as score, masks_from_labels};
use crate::predict::{self, Tta};
use crate::training::{self, DeviceChoice, TARGET_LABELS, Thresholds};
use crate::{Error, Progress, Result};

/// The `evaluate` stage's params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluateConfig {
    pub tta: Tta,
    pub batch_size: usize,
    /// Choose each class's threshold on these slices (else keep the bundle's).
    pub tune_thresholds: bool,
    /// The thresholds tried: `sweep_from`, `sweep_from + sweep_step`, … up to `sweep_to`.
    pub sweep_from: f64,
    pub sweep_to: f64,
    pub sweep_step: f64,
    /// Slices in each of the best and worst grids of the report.
    pub report_slices: usize,
    pub device: DeviceChoice,
}

impl Default for EvaluateConfig {
    fn default() -> Self {
        Self {
            tta: Tta::None,
            batch_size: 4,
            tune_thresholds: true,
            sweep_from: 0.05,
            sweep_to: 0.95,
            sweep_step: 0.05,
            report_slices: 6,
            device: DeviceChoice::Auto,
        }
    }
}

impl EvaluateConfig {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::invalid_param("batch_size", "expected at least 1"));
        }
        let in_range = |v: f64| v.is_finite() && v > 0.0 && v < 1.0;
        if !(in_range(self.sweep_from)
            && in_range(self.sweep_to)
            && self.sweep_from <= self.sweep_to)
        {
            return Err(Error::invalid_param(
                "sweep_from",
                format!(
                    "the sweep must lie inside (0, 1) with sweep_from ≤ sweep_to, got {}…{}",
                    self.sweep_from, self.sweep_to
                ),
            ));
        }
        if !(self.sweep_step.is_finite() && self.sweep_step > 0.0) {
            return Err(Error::invalid_param(
                "sweep_step",
                "expected a positive step",
            ));
        }
        Ok(())
    }

    /// The thresholds of the sweep, rounded to 1e-6 so that 0.1 + 0.2 reads 0.3.
    pub fn sweep(&self) -> Vec<f64> {
        let steps = ((self.sweep_to - self.sweep_from) / self.sweep_step + 1e-9).floor() as usize;
        (0..=steps)
            .map(|i| ((self.sweep_from + i as f64 * self.sweep_step) * 1e6).round() / 1e6)
            .collect()
    }
}

/// One point of the threshold sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub threshold: f64,
    pub ggo: f64,
    pub consolidation: f64,
}

/// `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The metrics at the chosen thresholds.
    #[serde(flatten)]
    pub metrics: Metrics,
    pub thresholds: Thresholds,
    /// The score with the bundle's thresholds as trained, before the sweep.
    pub score_before_sweep: f64,
    pub sweep: Vec<SweepPoint>,
    pub tta: Tta,
    /// The model's time per slice (TTA views included), in seconds.
    pub seconds_per_slice: f64,
}

/// Where evaluation writes.
#[derive(Debug, Clone, Copy)]
pub struct EvaluateOutputs<'a> {
    pub metrics: &'a Path,
    pub per_slice: &'a Path,
    /// A copy of the bundle with the chosen thresholds.
    pub bundle: &'a Path,
    /// A folder: report.html, best.png, worst.png, curve.png (when the training curve is given).
    pub report: &'a Path,
}

/// Pixel F1 of `p > t` against `truth` for every `t`, from one pass over the pixels: each
/// probability falls into one of 1000 bins and a threshold counts the bins from its own up, so
/// the curve is exact to 0.001 (the final metrics are computed on the exact masks).
fn f1_curve(p: ArrayView3<f32>, truth: ArrayView3<bool>, thresholds: &[f64]) -> Vec<f64> {
    const BINS: usize = 1000;
    let (mut pos, mut neg) = (vec![0u64; BINS + 1], vec![0u64; BINS + 1]);
    for (&v, &t) in p.iter().zip(truth.iter()) {
        let bin = ((f64::from(v) * BINS as f64).floor() as usize).min(BINS);
        if t {
            pos[bin] += 1;
        } else {
            neg[bin] += 1;
        }
    }
    let total_pos: u64 = pos.iter().sum();
    thresholds
        .iter()
        .map(|&t| {
            // Bins whose whole range lies above t; thresholds of the sweep sit on bin edges.
            let first = ((t * BINS as f64).round() as usize).min(BINS + 1);
            let tp: u64 = pos[first..].iter().sum();
            let fp: u64 = neg[first..].iter().sum();
            Counts {
                tp,
                fp,
                fn_: total_pos - tp,
                tn: 0,
            }
            .f1()
        })
        .collect()
}

/// The threshold with the best F1; ties go to the one nearest 0.5.
fn best_threshold(thresholds: &[f64], f1: &[f64]) -> f64 {
    let mut best: (f64, f64) = (f64::NEG_INFINITY, 0.5);
    for (&t, &f) in thresholds.iter().zip(f1) {
        let better = f > best.0 + 1e-12
            || ((f - best.0).abs() <= 1e-12 && (t - 0.5).abs() < (best.1 - 0.5).abs());
        if better {
            best = (f, t);
        }
    }
    best.1
}

fn masks_at(p: ArrayView4<f32>, thresholds: [f64; 2]) -> Array4<bool> {
    let mut m = p.mapv(|_| false);
    for (c, &t) in thresholds.iter().enumerate() {
        m.index_axis_mut(Axis(1), c)
            .zip_mut_with(&p.index_axis(Axis(1), c), |m, &v| *m = f64::from(v) > t);
    }
    m
}

/// Metrics of probabilities `(N,2,H,W)` against truth masks `(N,2,H,W)`: the sweep, the chosen
/// thresholds (or `trained` when `config.tune_thresholds` is off) and the metrics there. Returns
/// the masks at the chosen thresholds too.
pub fn assess(
    p: ArrayView4<f32>,
    truth: ArrayView4<bool>,
    trained: Thresholds,
    config: &EvaluateConfig,
    seconds_per_slice: f64,
) -> (Evaluation, Array4<bool>) {
    let trained = [trained.ggo, trained.consolidation];
    let before = score(masks_at(p, trained).view(), truth, &CLASSES).score;
    let grid = config.sweep();
    let curves: Vec<Vec<f64>> = (0..2)
        .map(|c| {
            f1_curve(
                p.index_axis(Axis(1), c),
                truth.index_axis(Axis(1), c),
                &grid,
            )
        })
        .collect();
    let chosen = if config.tune_thresholds {
        [
            best_threshold(&grid, &curves[0]),
            best_threshold(&grid, &curves[1]),
        ]
    } else {
        trained
    };
    let predicted = masks_at(p, chosen);
    let metrics = score(predicted.view(), truth, &CLASSES);
    let evaluation = Evaluation {
        metrics,
        thresholds: Thresholds {
            ggo: chosen[0],
            consolidation: chosen[1],
        },
        score_before_sweep: before,
        sweep: grid
            .iter()
            .enumerate()
            .map(|(i, &threshold)| SweepPoint {
                threshold,
                ggo: curves[0][i],
                consolidation: curves[1][i],
            })
            .collect(),
        tta: config.tta,
        seconds_per_slice,
    };
    (evaluation, predicted)
}

/// Evaluates the bundle in `bundle_dir` on validation images `(N,C,S,S)` and labels `(N,S,S)`.
pub fn evaluate(
    bundle_dir: &Path,
    val_images: &Path,
    val_labels: &Path,
    curve: Option<&Path>,
    config: &EvaluateConfig,
    outputs: &EvaluateOutputs<'_>,
    progress: &dyn Progress,
) -> Result<Evaluation> {
    config.validate()?;
    let device = training::select_device(config.device)?.device;
    let bundle = training::load_bundle(bundle_dir, &device)?;
    let images: Array4<f32> = crate::data::npy::read(val_images)?;
    let labels: Array3<u8> = crate::data::npy::read(val_labels)?;
    if images.dim().0 != labels.dim().0 || images.dim().2 != labels.dim().1 {
        return Err(Error::invalid_data(
            val_labels,
            format!(
                "labels {:?} do not match images {:?}",
                labels.dim(),
                images.dim()
            ),
        ));
    }
    let n = images.dim().0;
    progress.start(n as u64, "slices");
    let started = Instant::now();
    let p = predict::probabilities(&bundle, images.view(), config.tta, config.batch_size)?;
    let seconds_per_slice = started.elapsed().as_secs_f64() / n.max(1) as f64;
    progress.advance(n as u64);
    let truth = masks_from_labels(labels.view(), &TARGET_LABELS);

    let trained = Thresholds {
        ggo: bundle.thresholds.ggo,
        consolidation: bundle.thresholds.consolidation,
    };
    let (evaluation, predicted) =
        assess(p.view(), truth.view(), trained, config, seconds_per_slice);
    let thresholds = evaluation.thresholds;

    let text = serde_json::to_string_pretty(&evaluation)
        .map_err(|e| Error::invalid_data(outputs.metrics, e.to_string()))?;
    std::fs::write(outputs.metrics, text + "\n").map_err(|e| Error::io(outputs.metrics, e))?;
    let dice = per_slice_dice(predicted.view(), truth.view());
    write_per_slice(outputs.per_slice, &dice, predicted.view(), truth.view())?;
    training::write_bundle(
        outputs.bundle,
        &bundle.model,
        &bundle.config,
        &bundle.preprocessing,
        thresholds,
    )?;
    write_report(
        outputs.report,
        &evaluation,
        &dice,
        images.view(),
        labels.view(),
        predicted.view(),
        curve,
        config.report_slices,
    )?;
    Ok(evaluation)
}

/// Each slice's Dice per class (both empty → 1).
fn per_slice_dice(pred: ArrayView4<bool>, truth: ArrayView4<bool>) -> Vec<[f64; 2]> {
    (0..pred.dim().0)
        .map(|i| {
            let one = |c: usize| {
                Counts::of(
                    pred.slice(ndarray::s![i, c, .., ..]).iter().copied(),
                    truth.slice(ndarray::s![i, c, .., ..]).iter().copied(),
                )
                .f1()
            };
            [one(0), one(1)]
        })
        .collect()
}

fn write_per_slice(
    path: &Path,
    dice: &[[f64; 2]],
    pred: ArrayView4<bool>,
    truth: ArrayView4<bool>,
) -> Result<()> {
    let mut csv = String::from(
        "slice,dice_ggo,dice_consolidation,mean_dice,truth_ggo_px,truth_consolidation_px,pred_ggo_px,pred_consolidation_px\n",
    );
    let count = |m: ArrayView4<bool>, i: usize, c: usize| {
        m.slice(ndarray::s![i, c, .., ..])
            .iter()
            .filter(|&&v| v)
            .count()
    };
    for (i, d) in dice.iter().enumerate() {
        let _ = writeln!(
            csv,
            "{i},{:.6},{:.6},{:.6},{},{},{},{}",
            d[0],
            d[1],
            (d[0] + d[1]) / 2.0,
            count(truth, i, 0),
            count(truth, i, 1),
            count(pred, i, 0),
            count(pred, i, 1)
        );
    }
    std::fs::write(path, csv).map_err(|e| Error::io(path, e))
}

/// Labels of a slice from its two class masks (consolidation wins).
fn labels_of(m: ArrayView4<bool>, i: usize) -> ndarray::Array2<u8> {
    let (_, _, h, w) = m.dim();
    ndarray::Array2::from_shape_fn((h, w), |(y, x)| {
        if m[(i, 1, y, x)] {
            2
        } else if m[(i, 0, y, x)] {
            1
        } else {
            0
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn write_report(
    dir: &Path,
    evaluation: &Evaluation,
    dice: &[[f64; 2]],
    images: ArrayView4<f32>,
    labels: ndarray::ArrayView3<u8>,
    pred: ArrayView4<bool>,
    curve: Option<&Path>,
    count: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Slices with a lesion in truth or prediction, ranked by mean Dice; index breaks ties.
    let mut ranked: Vec<(usize, f64)> = dice
        .iter()
        .enumerate()
        .filter(|&(i, _)| {
            labels
                .index_axis(Axis(0), i)
                .iter()
                .any(|&l| l == 1 || l == 2)
                || pred.index_axis(Axis(0), i).iter().any(|&v| v)
        })
        .map(|(i, d)| (i, (d[0] + d[1]) / 2.0))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let tiles = |chosen: &[(usize, f64)]| -> Vec<image::RgbImage> {
        chosen
            .iter()
            .flat_map(|&(i, _)| {
                let ct = images.slice(ndarray::s![i, 0, .., ..]);
                let truth: ndarray::Array2<u8> = labels
                    .index_axis(Axis(0), i)
                    .mapv(|l| if l == 1 || l == 2 { l } else { 0 });
                let none = ndarray::Array2::<u8>::zeros(ct.dim());
                [
                    crate::render::at_size(crate::render::overlay(ct, none.view()), 256),
                    crate::render::at_size(crate::render::overlay(ct, truth.view()), 256),
                    crate::render::at_size(
                        crate::render::overlay(ct, labels_of(pred, i).view()),
                        256,
                    ),
                ]
            })
            .collect()
    };
    let best: Vec<_> = ranked.iter().take(count).copied().collect();
    let worst: Vec<_> = ranked.iter().rev().take(count).copied().collect();
    crate::render::save_png(
        &dir.join("best.png"),
        &crate::render::grid(&tiles(&best), 3),
    )?;
    crate::render::save_png(
        &dir.join("worst.png"),
        &crate::render::grid(&tiles(&worst), 3),
    )?;
    if let Some(curve) = curve {
        std::fs::copy(curve, dir.join("curve.png")).map_err(|e| Error::io(curve, e))?;
    }
    let m = &evaluation.metrics;
    let mut html = String::from(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>covseg evaluation</title>\n<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:.2em .8em;text-align:right}</style>\n",
    );
    let _ = writeln!(
        html,
        "<h1>Validation: score {:.4}</h1>\n<p>{} slices; thresholds GGO {} and consolidation {} (score {:.4} before the sweep); TTA {:?}; {:.3} s per slice.</p>",
        m.score,
        m.slices,
        evaluation.thresholds.ggo,
        evaluation.thresholds.consolidation,
        evaluation.score_before_sweep,
        evaluation.tta,
        evaluation.seconds_per_slice
    );
    html.push_str("<table><tr><th>class</th><th>pixel F1</th><th>per-image Dice</th><th>precision</th><th>recall</th><th>IoU</th></tr>\n");
    for c in &m.classes {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
            c.class, c.f1, c.per_image_dice, c.precision, c.recall, c.iou
        );
    }
    html.push_str("</table>\n<p>Each row: the CT slice, the truth, the prediction (GGO red, consolidation green).</p>\n");
    let _ = writeln!(
        html,
        "<h2>Best slices</h2>\n<img src=\"best.png\" alt=\"best slices\">"
    );
    let _ = writeln!(
        html,
        "<h2>Worst slices</h2>\n<img src=\"worst.png\" alt=\"worst slices\">"
    );
    if curve.is_some() {
        let _ = writeln!(
            html,
            "<h2>Training</h2>\n<img src=\"curve.png\" alt=\"training curves\">"
        );
    }
    let page = dir.join("report.html");
    std::fs::write(&page, html).map_err(|e| Error::io(&page, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, Array4};

    #[test]
    fn the_sweep_lists_round_thresholds() {
        let config = EvaluateConfig::default();
        let grid = config.sweep();
        assert_eq!(grid.len(), 19);
        assert_eq!(grid[0], 0.05);
        assert_eq!(grid[5], 0.3);
        assert_eq!(grid[18], 0.95);
    }

    /// Probabilities that separate the truth at 0.3 but not at 0.5: the sweep must find 0.3.
    #[test]
    fn the_threshold_is_chosen_where_f1_peaks() {
        let truth = Array3::from_shape_fn((1, 4, 4), |(_, y, _)| y < 2);
        let p = Array3::from_shape_fn((1, 4, 4), |(_, y, _)| if y < 2 { 0.35f32 } else { 0.25 });
        let grid = EvaluateConfig::default().sweep();
        let f1 = f1_curve(p.view(), truth.view(), &grid);
        let chosen = best_threshold(&grid, &f1);
        assert_eq!(chosen, 0.3);
        let at = |t: f64| f1[grid.iter().position(|&g| g == t).unwrap()];
        assert_eq!(at(0.3), 1.0);
        assert!(at(0.5) < 1.0 && at(0.2) < 1.0);
    }

    /// Object keys in sorted order at every level, whether or not serde_json was built with
    /// `preserve_order` (feature unification decides that per build, not this crate).
    fn sorted(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }

    /// metrics.json of fixed synthetic probabilities: two 8×8 slices, GGO found a little too
    /// wide, consolidation found only above 0.3.
    #[test]
    fn metrics_json_of_fixed_predictions() {
        let truth = Array4::from_shape_fn((2, 2, 8, 8), |(i, c, y, x)| match c {
            0 => y < 4 && x < 4 + i,
            _ => y >= 5 && x >= 5,
        });
        let p = Array4::from_shape_fn((2, 2, 8, 8), |(i, c, y, x)| match c {
            0 => {
                if y < 4 && x < 5 + i {
                    0.8f32
                } else {
                    0.1
                }
            }
            _ => {
                if y >= 5 && x >= 5 {
                    0.4
                } else if y >= 5 {
                    0.2
                } else {
                    0.0
                }
            }
        });
        let trained = Thresholds {
            ggo: 0.5,
            consolidation: 0.5,
        };
        let (evaluation, _) = assess(
            p.view(),
            truth.view(),
            trained,
            &EvaluateConfig::default(),
            0.25,
        );
        assert_eq!(evaluation.thresholds.consolidation, 0.4);
        assert_eq!(evaluation.thresholds.ggo, 0.5);
        let mut json = serde_json::to_value(&evaluation).unwrap();
        // The sweep is long; keep three points of it in the snapshot.
        let sweep = json["sweep"].as_array().unwrap().clone();
        json["sweep"] =
            serde_json::Value::Array(vec![sweep[0].clone(), sweep[4].clone(), sweep[9].clone()]);
        insta::assert_snapshot!(serde_json::to_string_pretty(&sorted(json)).unwrap());
    }

    #[test]
    fn ties_go_to_the_threshold_nearest_one_half() {
        let grid = [0.2, 0.4, 0.55, 0.8];
        assert_eq!(best_threshold(&grid, &[0.9, 0.9, 0.9, 0.1]), 0.55);
    }
}
