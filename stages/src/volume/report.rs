//! The volume report: lesion and lung volumes in mL, the involvement of the whole lung and of each
//! lung, and the MosMed CT-0…CT-4 grade, as JSON and as a short HTML page with overlaid slices.
//!
//! Volumes are voxel counts × |det(affine)|. The Pan et al. 0–25 score rates each of the five
//! lobes, and covseg does not segment lobes: the report says so instead of guessing one.

use std::fmt::Write as _;
use std::io::Cursor;
use std::path::Path;

use base64::Engine as _;
use ndarray::{Array3, Axis, Zip};
use serde::{Deserialize, Serialize};

use super::lung::{self, LungMask};
use super::{Source, Volume};
use crate::{Error, Result, render};

/// Label values of the label maps covseg writes.
pub const BACKGROUND: u8 = 0;
pub const GGO: u8 = 1;
pub const CONSOLIDATION: u8 = 2;
pub const LUNG: u8 = 3;

pub const DISCLAIMER: &str = "Decision support, not diagnosis: automatic segmentation, with an \
     approximate lung mask; a radiologist must review it.";

/// Left, right and both lungs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sides {
    pub whole: f64,
    pub left: f64,
    pub right: f64,
}

/// Lesion volumes by class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lesions {
    pub ggo: f64,
    pub consolidation: f64,
    pub total: f64,
}

/// What a radiologist reads off one volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeReport {
    pub volume: String,
    pub shape: [usize; 3],
    pub spacing_mm: [f64; 3],
    /// The axis letters of i, j, k in RAS+ (`LPS` for an axial DICOM series).
    pub orientation: String,
    pub series_uid: Option<String>,
    pub lung_mask: String,
    pub lung_ml: Sides,
    pub lesion_ml: Lesions,
    /// Lesion volume in each lung, mL.
    pub lesion_ml_by_side: Sides,
    /// Lesion volume as a percentage of the lung volume.
    pub involvement_percent: Sides,
    /// MosMed: CT-0 none, CT-1 under 25 %, CT-2 25–50 %, CT-3 50–75 %, CT-4 over 75 %.
    pub mosmed_grade: String,
    /// Always `null`: the 0–25 score needs the five lobes.
    pub pan_score: Option<u32>,
    pub pan_score_note: String,
    pub warnings: Vec<String>,
    pub disclaimer: String,
}

/// The MosMed grade of a whole-lung involvement in percent.
pub fn mosmed_grade(percent: f64) -> &'static str {
    match percent {
        p if p <= 0.0 => "CT-0",
        p if p < 25.0 => "CT-1",
        p if p < 50.0 => "CT-2",
        p if p < 75.0 => "CT-3",
        _ => "CT-4",
    }
}

/// The label map written for a volume (0 background, 1 GGO, 2 consolidation, 3 other lung) and
/// its report, from the predicted lesion labels (0, 1, 2).
pub fn assess(volume: &Volume, lesions: &Array3<u8>) -> (Array3<u8>, VolumeReport, LungMask) {
    let lesion = lesions.mapv(|l| l == GGO || l == CONSOLIDATION);
    let mask = lung::lung_mask(volume, &lesion);
    let mut labels = lesions.clone();
    Zip::from(&mut labels)
        .and(&mask.lung)
        .for_each(|l, &in_lung| {
            if !in_lung {
                *l = BACKGROUND;
            } else if *l == BACKGROUND {
                *l = LUNG;
            }
        });
    let report = measure(volume, &labels, &mask);
    (labels, report, mask)
}

/// The report of a label map (0…3) over a given lung mask: the predicted one, or a phantom's
/// true lungs.
pub fn measure(volume: &Volume, labels: &Array3<u8>, mask: &LungMask) -> VolumeReport {
    let ml = volume.voxel_ml();
    let (mut lung_n, mut right_n, mut ggo, mut cons, mut lesion_right) = (0usize, 0, 0, 0, 0);
    Zip::from(labels)
        .and(&mask.lung)
        .and(&mask.right)
        .for_each(|&l, &in_lung, &right| {
            if !in_lung {
                return;
            }
            lung_n += 1;
            right_n += right as usize;
            match l {
                GGO => ggo += 1,
                CONSOLIDATION => cons += 1,
                _ => {}
            }
            if right && (l == GGO || l == CONSOLIDATION) {
                lesion_right += 1;
            }
        });
    let lesion_n = ggo + cons;
    let lung_ml = Sides {
        whole: lung_n as f64 * ml,
        right: right_n as f64 * ml,
        left: (lung_n - right_n) as f64 * ml,
    };
    let lesion_ml_by_side = Sides {
        whole: lesion_n as f64 * ml,
        right: lesion_right as f64 * ml,
        left: (lesion_n - lesion_right) as f64 * ml,
    };
    let percent = |part: f64, whole: f64| {
        if whole > 0.0 {
            100.0 * part / whole
        } else {
            0.0
        }
    };
    let involvement = Sides {
        whole: percent(lesion_ml_by_side.whole, lung_ml.whole),
        left: percent(lesion_ml_by_side.left, lung_ml.left),
        right: percent(lesion_ml_by_side.right, lung_ml.right),
    };
    let mut warnings = volume.warnings.clone();
    if lung_n == 0 {
        warnings.push("no lung found: is this a chest CT in HU?".into());
    }
    VolumeReport {
        volume: volume.name.clone(),
        shape: volume.shape(),
        spacing_mm: volume.spacing(),
        orientation: volume.affine.orientation(),
        series_uid: match &volume.source {
            Source::Dicom(info) if !info.series_uid.is_empty() => Some(info.series_uid.clone()),
            _ => None,
        },
        lung_mask: lung::METHOD.into(),
        lung_ml,
        lesion_ml: Lesions {
            ggo: ggo as f64 * ml,
            consolidation: cons as f64 * ml,
            total: lesion_n as f64 * ml,
        },
        lesion_ml_by_side,
        involvement_percent: involvement,
        mosmed_grade: mosmed_grade(involvement.whole).into(),
        pan_score: None,
        pan_score_note: "not computed: the Pan et al. 0–25 score rates each of the five lobes, \
                         and covseg does not segment lobes"
            .into(),
        warnings,
        disclaimer: DISCLAIMER.into(),
    }
}

/// The `n` slices (k) with the most lesion voxels, most first (ties: lower k first).
pub fn most_involved(labels: &Array3<u8>, n: usize) -> Vec<usize> {
    let mut ranked: Vec<(usize, usize)> = labels
        .axis_iter(Axis(2))
        .enumerate()
        .map(|(k, s)| {
            (
                k,
                s.iter()
                    .filter(|&&l| l == GGO || l == CONSOLIDATION)
                    .count(),
            )
        })
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.into_iter().take(n).map(|(k, _)| k).collect()
}

impl VolumeReport {
    /// The report as a short HTML page: the numbers and up to `slices` axial slices (those with
    /// the most lesion) with the labels overlaid.
    pub fn html(&self, volume: &Volume, labels: &Array3<u8>, slices: usize) -> Result<String> {
        let mut chosen = most_involved(labels, slices);
        chosen.sort_unstable();
        let mut figures = String::new();
        for k in chosen {
            // Shown as a radiologist expects: rows down the image, columns across ([j, i]).
            let hu = volume.hu.index_axis(Axis(2), k);
            let grey = hu.t().mapv(|v| ((v + 1350.0) / 1500.0).clamp(0.0, 1.0));
            let lab = labels.index_axis(Axis(2), k).t().to_owned();
            let picture = render::fit(render::overlay(grey.view(), lab.view()), 384);
            let mut png = Vec::new();
            picture
                .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| Error::invalid_data(Path::new(&self.volume), e.to_string()))?;
            let _ = write!(
                figures,
                "<figure><img alt=\"slice {k}\" src=\"data:image/png;base64,{}\"><figcaption>slice {k}</figcaption></figure>",
                base64::engine::general_purpose::STANDARD.encode(&png)
            );
        }
        let row = |name: &str, s: &Sides, unit: &str| {
            format!(
                "<tr><th>{name}</th><td>{:.1} {unit}</td><td>{:.1} {unit}</td><td>{:.1} {unit}</td></tr>",
                s.whole, s.right, s.left
            )
        };
        let warnings: String = self
            .warnings
            .iter()
            .map(|w| format!("<li>{}</li>", escape(w)))
            .collect();
        Ok(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>covseg: {name}</title>\
<style>body{{font:15px system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}\
table{{border-collapse:collapse}}td,th{{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}}\
th:first-child{{text-align:left}}figure{{display:inline-block;margin:.5em}}\
.note{{color:#555}}</style></head><body>\
<h1>{name}</h1><p class=\"note\">{disclaimer}</p>\
<p><b>MosMed grade {grade}</b> · involvement {inv:.1} % of the lungs · lesions {total:.1} mL \
(GGO {ggo:.1} mL, consolidation {cons:.1} mL)</p>\
<table><tr><th></th><th>both</th><th>right</th><th>left</th></tr>{lung}{lesion}{percent}</table>\
<p class=\"note\">Lung mask: {method}. Pan score: {pan}</p>\
<p class=\"note\">{shape} voxels of {sx:.2}×{sy:.2}×{sz:.2} mm, orientation {orientation}</p>\
<ul>{warnings}</ul>{figures}</body></html>\n",
            name = escape(&self.volume),
            disclaimer = escape(&self.disclaimer),
            grade = self.mosmed_grade,
            inv = self.involvement_percent.whole,
            total = self.lesion_ml.total,
            ggo = self.lesion_ml.ggo,
            cons = self.lesion_ml.consolidation,
            lung = row("lung", &self.lung_ml, "mL"),
            lesion = row("lesions", &self.lesion_ml_by_side, "mL"),
            percent = row("involvement", &self.involvement_percent, "%"),
            method = escape(&self.lung_mask),
            pan = escape(&self.pan_score_note),
            shape = self.shape.map(|d| d.to_string()).join("×"),
            sx = self.spacing_mm[0],
            sy = self.spacing_mm[1],
            sz = self.spacing_mm[2],
            orientation = self.orientation,
        ))
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Affine, dicom::SeriesInfo};

    /// A body of soft tissue (40 HU) in air with two lungs of −850 HU, 14 mm apart.
    fn phantom() -> Volume {
        let (n, nk) = (96usize, 6usize);
        let mut hu = Array3::from_elem((n, n, nk), -1000.0f32);
        for ((i, j, _), v) in hu.indexed_iter_mut() {
            let (x, y) = (i as f64 - 47.5, j as f64 - 47.5);
            if (x / 44.0).powi(2) + (y / 34.0).powi(2) < 1.0 {
                *v = 40.0;
            }
            let lung = |cx: f64| ((x - cx) / 15.0).powi(2) + (y / 24.0).powi(2) < 1.0;
            if lung(-22.0) || lung(22.0) {
                *v = -850.0;
            }
        }
        Volume {
            hu,
            affine: Affine::scaling([1.0, 1.0, 2.0]).flip_xy(),
            name: "phantom".into(),
            source: Source::Dicom(SeriesInfo {
                series_uid: "1.2.3".into(),
                modality: "CT".into(),
                ..Default::default()
            }),
            warnings: vec![],
        }
    }

    #[test]
    fn involvement_counts_subpleural_consolidation_that_thresholds_miss() {
        let mut v = phantom();
        let mut lesions = Array3::<u8>::zeros(v.hu.raw_dim());
        // Consolidation (+20 HU) along the outer edge of one lung, the pleura: at low i, which
        // the LPS-ordered grid puts on the patient's right (x_RAS = −i).
        for ((i, j, _), l) in lesions.indexed_iter_mut() {
            let (x, y) = (i as f64 - 47.5, j as f64 - 47.5);
            if ((x + 22.0) / 15.0).powi(2) + (y / 24.0).powi(2) < 1.0 && x < -31.0 {
                *l = CONSOLIDATION;
            }
        }
        Zip::from(&mut v.hu).and(&lesions).for_each(|h, &l| {
            if l == CONSOLIDATION {
                *h = 20.0;
            }
        });
        let (labels, report, _) = assess(&v, &lesions);
        let lesion_voxels = lesions.iter().filter(|&&l| l > 0).count() as f64;
        let lung_voxels = v.hu.iter().filter(|&&h| h == -850.0).count() as f64 + lesion_voxels;
        let truth = 100.0 * lesion_voxels / lung_voxels;
        let got = report.involvement_percent.whole;
        assert!(
            (got - truth).abs() < 0.1 * truth,
            "involvement {got} %, truth {truth} %"
        );
        assert!((report.lesion_ml.consolidation - lesion_voxels * 2.0 / 1000.0).abs() < 1e-9);
        // All of it on the patient's right (low i after the LPS flip), none on the left.
        assert!(report.lesion_ml_by_side.left == 0.0, "{report:?}");
        assert!(report.involvement_percent.right > report.involvement_percent.whole);
        let sides = report.lung_ml.left + report.lung_ml.right;
        assert!((sides - report.lung_ml.whole).abs() < 1e-9);
        assert!((report.lung_ml.left / report.lung_ml.right - 1.0).abs() < 0.1);
        assert_eq!(report.mosmed_grade, mosmed_grade(got));
        assert!(report.pan_score.is_none() && report.pan_score_note.contains("lobes"));
        assert!(labels.iter().any(|&l| l == LUNG));
        let html = report.html(&v, &labels, 3).unwrap();
        assert_eq!(html.matches("<img").count(), 3);
        assert!(html.contains("MosMed grade"));
    }

    #[test]
    fn grades_follow_mosmed() {
        let grades: Vec<&str> = [0.0, 0.1, 24.9, 25.0, 49.9, 50.0, 74.9, 75.0, 100.0]
            .map(mosmed_grade)
            .to_vec();
        assert_eq!(
            grades,
            [
                "CT-0", "CT-1", "CT-1", "CT-2", "CT-2", "CT-3", "CT-3", "CT-4", "CT-4"
            ]
        );
    }
}
