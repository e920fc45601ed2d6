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
        let bars = format == LogFormat::Human && std::io::stderr().is_terminal();
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
            bar: self.multi.add(ProgressBar::hidden()),
            stage: stage.to_owned(),
            enabled: self.bars,
        }
    }
}

pub struct StageBar {
    bar: ProgressBar,
    stage: String,
    enabled: bool,
}

impl StageBar {
    pub fn finish(&self) {
        self.bar.finish_and_clear();
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
        if let Ok(style) = ProgressStyle::with_template(&template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_prefix(self.stage.clone());
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.set_draw_target(ProgressDrawTarget::stderr());
        self.bar.enable_steady_tick(Duration::from_millis(250));
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
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
