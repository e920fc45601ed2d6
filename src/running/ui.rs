//! Progress bars for long stages (indicatif, only on a terminal) and the tracing log set-up, with
//! log lines printed above the bars instead of through them.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone)]
pub struct Ui {
    multi: MultiProgress,
    bars: bool,
}

impl Ui {
    pub fn new(format: LogFormat, verbosity: i8) -> Self {
        let bars = bars_wanted(format);
        let multi = MultiProgress::with_draw_target(if bars {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let ui = Self { multi, bars };
        let level = match verbosity {
            i8::MIN..=-1 => "warn",
            0 => "info",
            1 => "debug",
            _ => "trace",
        };
        let filter = EnvFilter::try_from_env("COVSEG_LOG")
            .unwrap_or_else(|_| EnvFilter::new(format!("covseg={level},covseg_stages={level}")));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(ui.clone())
            .with_target(false);
        let _ = match format {
            LogFormat::Human => builder.without_time().try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
        ui
    }

    /// A bar for one running stage; it appears when the stage announces its total.
    pub fn stage_progress(&self, stage: &str) -> StageBar {
        StageBar {
            multi: self.multi.clone(),
            bar: std::sync::OnceLock::new(),
            stage: stage.to_owned(),
            enabled: self.bars,
        }
    }
}

/// Whether bars are drawn: on a terminal, in the human log format, and not in CI (whose logs are
/// files that would keep every redraw).
fn bars_wanted(format: LogFormat) -> bool {
    format == LogFormat::Human
        && std::io::stderr().is_terminal()
        && std::env::var_os("CI").is_none_or(|v| v.is_empty() || v == "false" || v == "0")
}

/// A stage's bar. It belongs to the run's `MultiProgress`, so log lines are printed through it
/// (above the live bars) and no frozen copy of a bar is left behind.
pub struct StageBar {
    multi: MultiProgress,
    bar: std::sync::OnceLock<ProgressBar>,
    stage: String,
    enabled: bool,
}

impl StageBar {
    pub fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
            self.multi.remove(bar);
        }
    }
}

impl covseg_stages::Progress for StageBar {
    fn start(&self, total: u64, unit: &str) {
        if !self.enabled {
            return;
        }
        let template = format!(
            "{{prefix:>12}} [{{bar:30}}] {{pos}}/{{len}} {unit} · {{elapsed}} · eta {{eta}}"
        );
        let bar = self.bar.get_or_init(|| {
            let bar = self.multi.add(ProgressBar::new(total));
            bar.set_prefix(self.stage.clone());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_length(total);
        bar.set_position(0);
        bar.reset_eta();
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self.bar.get() {
            bar.inc(n);
        }
    }

    fn set_total(&self, total: u64) {
        if let Some(bar) = self.bar.get() {
            bar.set_length(total);
        }
    }
}

/// Log lines go to stderr, above any bars.
pub struct LogLine {
    multi: MultiProgress,
    buffer: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.buffer);
        self.multi.suspend(|| {
            let _ = std::io::stderr().lock().write_all(&bytes);
        });
    }
}

impl<'a> MakeWriter<'a> for Ui {
    type Writer = LogLine;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine {
            multi: self.multi.clone(),
            buffer: Vec::new(),
        }
    }
}
