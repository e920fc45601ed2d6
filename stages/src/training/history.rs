//! What each epoch measured: one record per epoch, written as `metrics.jsonl` (a JSON object a
//! line) and drawn as the training curve (losses and validation F1 per epoch).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plot::{Chart, Series};
use crate::{Error, Result};

/// Validation pixel F1 of the two scored classes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassF1 {
    pub ggo: f64,
    pub consolidation: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f64,
    /// Absent when training runs without a validation set (a final training on all data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_f1: Option<ClassF1>,
    /// Mean of the two F1: the competition's score, which early stopping follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_score: Option<f64>,
    /// The rate of the epoch's last step.
    pub lr: f64,
    /// Wall time of the epoch (training and validation).
    pub seconds: f64,
}

/// Writes the records as JSON lines.
pub fn write_jsonl(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let mut text = String::new();
    for record in records {
        let line =
            serde_json::to_string(record).map_err(|e| Error::invalid_data(path, e.to_string()))?;
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Draws train and validation loss and the validation F1 per epoch.
pub fn save_curve(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let series = |name: &str, value: fn(&EpochRecord) -> Option<f64>| Series {
        name: name.into(),
        points: records
            .iter()
            .filter_map(|r| Some((r.epoch as f64, value(r)?)))
            .collect(),
        scatter: records.len() == 1,
    };
    let chart = Chart {
        title: "training".into(),
        x_label: "epoch".into(),
        y_label: "loss / F1".into(),
        log_x: false,
        series: vec![
            series("train loss", |r| Some(r.train_loss)),
            series("val loss", |r| r.val_loss),
            series("val F1 GGO", |r| r.val_f1.map(|f| f.ggo)),
            series("val F1 consolidation", |r| {
                r.val_f1.map(|f| f.consolidation)
            }),
            series("val score", |r| r.val_score),
        ]
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect(),
    };
    crate::plot::save(path, &chart, 720, 440)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_json_object_per_line_and_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<EpochRecord> = (1..=3)
            .map(|epoch| EpochRecord {
                epoch,
                train_loss: 1.0 / epoch as f64,
                val_loss: Some(1.2 / epoch as f64),
                val_f1: Some(ClassF1 {
                    ggo: 0.2 * epoch as f64,
                    consolidation: 0.1 * epoch as f64,
                }),
                val_score: Some(0.15 * epoch as f64),
                lr: 1e-3,
                seconds: 0.5,
            })
            .collect();
        let jsonl = dir.path().join("metrics.jsonl");
        write_jsonl(&jsonl, &records).unwrap();
        let text = std::fs::read_to_string(&jsonl).unwrap();
        let back: Vec<EpochRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // serde_json's default parser may round the last bit differently.
        for (b, r) in back.iter().zip(&records) {
            assert_eq!(b.epoch, r.epoch);
            assert!(
                (b.val_loss.unwrap() - r.val_loss.unwrap()).abs() < 1e-12
                    && (b.val_score.unwrap() - r.val_score.unwrap()).abs() < 1e-12
            );
        }
        assert_eq!(back.len(), records.len());
        let png = dir.path().join("curve.png");
        save_curve(&png, &records).unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    }
}
