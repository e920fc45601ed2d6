//! The EDA page: the charts, the sample grid and the HTML around the numbers of `analyse`.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;

use ndarray::Array2;

use super::{EdaConfig, EdaReport, EdaSlice, EdaSource, GroupStats, LesionSizes, Unit, has_lesion};
use crate::data::labels::LABEL_NAMES;
use crate::plot::{Chart, Series};
use crate::{Error, Result};

/// Histogram of the intensities under each label of a source, as shares of that label's pixels.
fn histograms(source: &EdaSource, config: &EdaConfig) -> Vec<Series> {
    let [lo, hi] = match source.unit {
        Unit::Hu => config.hu_range,
        Unit::Grey => [0.0, 256.0],
    };
    let bins = config.bins;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![vec![0u64; bins]; LABEL_NAMES.len()];
    for s in &source.slices {
        for (&v, &l) in s.image.iter().zip(&s.labels) {
            let b = (((f64::from(v) - lo) / width).floor()).clamp(0.0, (bins - 1) as f64) as usize;
            counts[usize::from(l).min(LABEL_NAMES.len() - 1)][b] += 1;
        }
    }
    let present: BTreeSet<usize> = (0..LABEL_NAMES.len())
        .filter(|&c| counts[c].iter().any(|&n| n > 0))
        .collect();
    present
        .into_iter()
        .map(|c| {
            let total = counts[c].iter().sum::<u64>() as f64;
            Series {
                name: LABEL_NAMES[c].to_owned(),
                points: (0..bins)
                    .map(|b| (lo + (b as f64 + 0.5) * width, counts[c][b] as f64 / total))
                    .collect(),
                scatter: false,
            }
        })
        .collect()
}

/// Counts of lesions per size bin (log-spaced, 1 px to the largest), one line per class, from
/// the sizes `analyse` measured.
fn size_series(lesions: &[LesionSizes], source: &str, spacing: Option<f64>) -> Vec<Series> {
    let area = spacing.map_or(1.0, |s| s * s);
    lesions
        .iter()
        .filter(|l| l.source == source)
        .map(|l| {
            let sizes: Vec<f64> = l.sizes.iter().map(|n| n * area).collect();
            let largest = sizes.iter().copied().fold(area, f64::max);
            let edges: Vec<f64> = (0..=24)
                .map(|i| area * (largest / area).powf(f64::from(i) / 24.0))
                .collect();
            let points = edges
                .windows(2)
                .map(|e| {
                    let n = sizes
                        .iter()
                        .filter(|&&s| s >= e[0] && (s < e[1] || e[1] == largest))
                        .count();
                    ((e[0] * e[1]).sqrt(), n as f64)
                })
                .collect();
            Series {
                name: l.class.clone(),
                points,
                scatter: false,
            }
        })
        .collect()
}

/// A grey picture in [0,1] of a slice: HU through the lung window, grey as it is.
fn display(slice: &EdaSlice, unit: Unit) -> Array2<f32> {
    match unit {
        Unit::Hu => slice
            .image
            .mapv(|v| ((v + 1350.0) / 1500.0).clamp(0.0, 1.0)),
        Unit::Grey => slice.image.mapv(|v| (v / 255.0).clamp(0.0, 1.0)),
    }
}

/// Up to `count` slices of a source spread evenly, those with lesions first.
fn samples(source: &EdaSource, count: usize) -> Vec<&EdaSlice> {
    let (with, without): (Vec<&EdaSlice>, Vec<&EdaSlice>) =
        source.slices.iter().partition(|s| has_lesion(&s.labels));
    let spread = |v: &[&'_ EdaSlice], k: usize| -> Vec<usize> {
        let k = k.min(v.len());
        (0..k).map(|i| i * v.len() / k.max(1)).collect()
    };
    let mut picked: Vec<&EdaSlice> = spread(&with, count).into_iter().map(|i| with[i]).collect();
    let rest = count - picked.len();
    picked.extend(spread(&without, rest).into_iter().map(|i| without[i]));
    picked
}

/// The files of the report, written into `dir`: `eda.html`, `eda.json`, and per source
/// `<source>_histograms.png`, `<source>_lesion_sizes.png`, `<source>_samples.png`, plus
/// `class_balance.png`.
pub fn write_report(
    sources: &[EdaSource],
    report: &EdaReport,
    config: &EdaConfig,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_string_pretty(report).expect("plain data") + "\n";
    std::fs::write(dir.join("eda.json"), json).map_err(|e| Error::io(dir.join("eda.json"), e))?;
    // Class balance: one line per lesion class over the groups, as a share of lung pixels (the
    // pixel share of the whole slice hides lesions behind the background).
    let names: Vec<String> = report
        .groups
        .iter()
        .map(|g| format!("{} {}", g.source, g.part))
        .collect();
    let lung_share = |g: &GroupStats, class: &str| {
        let lung: f64 = ["ggo", "consolidation", "other_lung"]
            .iter()
            .map(|c| g.class_share[*c])
            .sum();
        if lung > 0.0 {
            g.class_share[class] / lung
        } else {
            0.0
        }
    };
    let balance = Chart {
        title: "lesion share of the lungs, per group (x: groups in the table's order)".into(),
        x_label: "group".into(),
        y_label: "share of lung pixels".into(),
        log_x: false,
        series: ["ggo", "consolidation"]
            .iter()
            .map(|class| Series {
                name: (*class).to_owned(),
                points: report
                    .groups
                    .iter()
                    .enumerate()
                    .map(|(i, g)| ((i + 1) as f64, lung_share(g, class)))
                    .collect(),
                scatter: true,
            })
            .collect(),
    };
    crate::plot::save(&dir.join("class_balance.png"), &balance, 800, 400)?;
    let mut html = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>covseg EDA</title>\n<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}</style></head><body>\n<h1>Exploratory data analysis</h1>\n",
    );
    let _ = writeln!(
        html,
        "<h2>Class balance</h2>\n<table><tr><th>#</th><th>group</th><th>slices</th>"
    );
    for n in LABEL_NAMES {
        let _ = write!(html, "<th>{n}</th>");
    }
    let _ = writeln!(html, "<th>lesion-free slices</th></tr>");
    for (i, (g, name)) in report.groups.iter().zip(&names).enumerate() {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{name}</td><td>{}</td>",
            i + 1,
            g.slices
        );
        for n in LABEL_NAMES {
            let _ = write!(html, "<td>{:.2} %</td>", 100.0 * g.class_share[n]);
        }
        let _ = writeln!(
            html,
            "<td>{} ({:.0} %)</td></tr>",
            g.lesion_free_slices,
            100.0 * g.lesion_free_share
        );
    }
    let _ = writeln!(
        html,
        "</table>\n<p><img src=\"class_balance.png\" alt=\"class balance\"></p>"
    );
    let unit_mm = report.pixel_spacing_mm.is_some();
    let _ = writeln!(
        html,
        "<h2>Lesion sizes</h2>\n<p>8-connected components per slice; percentiles 5, 25, 50, 75, 95{}.</p>\n<table><tr><th>source</th><th>class</th><th>lesions</th><th>pixels</th>{}</tr>",
        if unit_mm {
            ", in pixels and mm²"
        } else {
            " in pixels (set pixel_spacing_mm for mm²)"
        },
        if unit_mm { "<th>mm²</th>" } else { "" }
    );
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| {
                if x.is_nan() {
                    "–".to_owned()
                } else {
                    format!("{x:.0}")
                }
            })
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for l in &report.lesions {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            l.source,
            l.class,
            l.count,
            fmt(&l.pixels_percentiles)
        );
        if let Some(mm) = &l.mm2_percentiles {
            let _ = write!(html, "<td>{}</td>", fmt(mm));
        }
        let _ = writeln!(html, "</tr>");
    }
    let _ = writeln!(html, "</table>");
    for source in sources {
        let name = &source.name;
        let unit = match source.unit {
            Unit::Hu => "HU",
            Unit::Grey => "8-bit grey",
        };
        let hist = Chart {
            title: format!("{name}: intensity per class"),
            x_label: unit.into(),
            y_label: "share of the class's pixels".into(),
            log_x: false,
            series: histograms(source, config),
        };
        crate::plot::save(&dir.join(format!("{name}_histograms.png")), &hist, 800, 400)?;
        let sizes = Chart {
            title: format!("{name}: lesion sizes"),
            x_label: if unit_mm {
                "mm²".into()
            } else {
                "pixels".into()
            },
            y_label: "lesions".into(),
            log_x: true,
            series: size_series(&report.lesions, name, report.pixel_spacing_mm),
        };
        crate::plot::save(
            &dir.join(format!("{name}_lesion_sizes.png")),
            &sizes,
            800,
            400,
        )?;
        let tiles: Vec<_> = samples(source, config.samples)
            .into_iter()
            .map(|s| {
                crate::render::at_size(
                    crate::render::overlay(display(s, source.unit).view(), s.labels.view()),
                    192,
                )
            })
            .collect();
        if !tiles.is_empty() {
            crate::render::save_png(
                &dir.join(format!("{name}_samples.png")),
                &crate::render::grid(&tiles, 4),
            )?;
        }
        let _ = writeln!(
            html,
            "<h2>{name}</h2>\n<h3>Intensity per class</h3>\n<img src=\"{name}_histograms.png\" alt=\"histograms\">\n<h3>Lesion sizes</h3>\n<img src=\"{name}_lesion_sizes.png\" alt=\"lesion sizes\">"
        );
        if !source.slices.is_empty() {
            let _ = writeln!(
                html,
                "<h3>Samples</h3>\n<p>GGO red, consolidation green, other lung blue; slices with lesions first.</p>\n<img src=\"{name}_samples.png\" alt=\"sample slices\">"
            );
        }
    }
    let _ = writeln!(html, "</body></html>");
    std::fs::write(dir.join("eda.html"), html).map_err(|e| Error::io(dir.join("eda.html"), e))
}
