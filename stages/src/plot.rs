//! Line and scatter charts as PNG (training curves, tuning results), drawn with plotters into a
//! memory buffer. The font (DejaVu Sans) is compiled in, so no system fonts are needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::{Error, Result};

/// One named line (or point set) of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw points only (a scatter), not a line.
    pub scatter: bool,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic x axis (learning rates).
    pub log_x: bool,
    pub series: Vec<Series>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // DejaVu is a valid font: this cannot fail, and text would only be missing if it did.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn bounds(chart: &Chart) -> ((f64, f64), (f64, f64)) {
    let points = || {
        chart
            .series
            .iter()
            .flat_map(|s| &s.points)
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!chart.log_x || *x > 0.0))
    };
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in points() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        return ((if chart.log_x { 1e-5 } else { 0.0 }, 1.0), (0.0, 1.0));
    }
    if x1 <= x0 {
        (x0, x1) = if chart.log_x {
            (x0 / 2.0, x1 * 2.0)
        } else {
            (x0 - 0.5, x1 + 0.5)
        };
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    ((x0, x1), (y0 - pad, y1 + pad))
}

/// The chart body, for a linear or a logarithmic x range (plotters types them differently).
macro_rules! draw {
    ($chart:expr, $root:expr, $x:expr, $y:expr) => {{
        let chart: &Chart = $chart;
        (|| -> std::result::Result<(), String> {
            let mut ctx = ChartBuilder::on($root)
                .caption(&chart.title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d($x, $y)
                .map_err(|e| e.to_string())?;
            ctx.configure_mesh()
                .x_desc(&chart.x_label)
                .y_desc(&chart.y_label)
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, s) in chart.series.iter().enumerate() {
                let colour = PALETTE[i % PALETTE.len()];
                let points: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!chart.log_x || *x > 0.0))
                    .collect();
                let legend = if s.scatter {
                    ctx.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                        .map_err(|e| e.to_string())?
                } else {
                    ctx.draw_series(LineSeries::new(points, colour.stroke_width(2)))
                        .map_err(|e| e.to_string())?
                };
                legend.label(&s.name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            }
            if chart.series.iter().any(|s| !s.name.is_empty()) {
                ctx.configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 14))
                    .draw()
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })()
    }};
}

/// Draws the chart and writes it as a PNG of `width`×`height` pixels.
pub fn save(path: &Path, chart: &Chart, width: u32, height: u32) -> Result<()> {
    register_font();
    let mut buffer = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| Error::invalid_data(path, e.to_string()))?;
        let ((x0, x1), (y0, y1)) = bounds(chart);
        let drawn = if chart.log_x {
            draw!(chart, &root, (x0..x1).log_scale(), y0..y1)
        } else {
            draw!(chart, &root, x0..x1, y0..y1)
        };
        drawn.map_err(|e| Error::invalid_data(path, format!("cannot draw the chart: {e}")))?;
        root.present()
            .map_err(|e| Error::invalid_data(path, e.to_string()))?;
    }
    let picture = image::RgbImage::from_raw(width, height, buffer)
        .ok_or_else(|| Error::invalid_data(path, "chart buffer has the wrong size"))?;
    crate::render::save_png(path, &picture)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_lines_and_a_log_scatter_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let line = Chart {
            title: "training".into(),
            x_label: "epoch".into(),
            y_label: "loss".into(),
            log_x: false,
            series: vec![Series {
                name: "train loss".into(),
                points: (0..10)
                    .map(|i| (f64::from(i), 1.0 / f64::from(i + 1)))
                    .collect(),
                scatter: false,
            }],
        };
        let p = dir.path().join("curve.png");
        save(&p, &line, 480, 320).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (480, 320));
        let blue = img.pixels().filter(|px| px[2] > 150 && px[0] < 80).count();
        assert!(blue > 50, "the line is drawn");
        let dark = img
            .pixels()
            .filter(|px| px[0] < 60 && px[1] < 60 && px[2] < 60)
            .count();
        assert!(dark > 200, "axes and text are drawn");
        let scatter = Chart {
            log_x: true,
            series: vec![Series {
                name: "trials".into(),
                points: vec![(1e-4, 0.5), (1e-3, 0.7), (3e-3, 0.6)],
                scatter: true,
            }],
            ..line
        };
        save(&dir.path().join("lr.png"), &scatter, 480, 320).unwrap();
    }
}
