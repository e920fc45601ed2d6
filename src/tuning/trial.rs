//! A tuning trial as a cached run. The tune stage writes a spec file per trial (its key parts and
//! input paths, all in the cache) and runs segments of it as `covseg trial SPEC --until N
//! --report FILE`: each segment takes the trial key's lock, goes on from the checkpoint in the
//! key's work folder, and when the run is complete publishes it as an ordinary entry of the
//! trial's kind, so a train stage with the same params, seed and inputs is a cache hit. A command
//! line and files are the whole interface, so a cluster executor can send the same commands.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cache::key::{InputSources, KeyParts};
use crate::cache::store::ArtifactStore;
use crate::error::{Diagnostic, Error, Result};
use crate::pipeline::kind::{StageJob, Tunable, run_guarded};
use crate::pipeline::registry::Registry;
use crate::running::build::{Built, Target, build};

/// Everything one trial needs; written by the tune stage, read by `covseg trial`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialSpec {
    pub cache: PathBuf,
    /// Shown in `cache ls`: the tune stage's name and the trial number.
    pub stage: String,
    pub pipeline: String,
    pub parts: KeyParts,
    pub sources: InputSources,
    pub inputs: BTreeMap<String, PathBuf>,
}

/// What a segment did, written to the `--report` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialReport {
    pub key: String,
    /// Validation score after each epoch done so far.
    pub scores: Vec<f64>,
    /// The run is complete and published.
    pub complete: bool,
    /// It was complete in the cache already.
    pub cached: bool,
    pub seconds: f64,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The failure is the params' or data's fault (exit code 2), not the machine's.
    pub input_error: bool,
    /// When the segment ran, in Unix milliseconds.
    #[serde(default)]
    pub started_unix_ms: u64,
    #[serde(default)]
    pub ended_unix_ms: u64,
}

fn spec_error(path: &Path, message: String) -> Error {
    Diagnostic::new(format!("{}: {message}", path.display()))
        .help("trial specs are written by a tune stage; rerun the pipeline to write them again")
        .into()
}

pub fn read_spec(path: &Path) -> Result<TrialSpec> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| spec_error(path, format!("not a trial spec: {e}")))
}

/// `covseg trial`: runs the trial until `until` epochs are done and writes the report (also when
/// the trial fails, with the reason). The returned error is for the exit code.
/// `registry` names the kinds a spec may ask for (the CLI hands it in: the trial runner knows no
/// kinds of its own).
pub fn run(
    spec_path: &Path,
    until: usize,
    threads: usize,
    report_path: &Path,
    registry: &Registry,
) -> Result<()> {
    let started = Instant::now();
    let spec = read_spec(spec_path)?;
    let key = spec.parts.key();
    let mut report = TrialReport {
        key: key.hex(),
        scores: Vec::new(),
        complete: false,
        cached: false,
        seconds: 0.0,
        error: None,
        input_error: false,
        started_unix_ms: crate::cache::store::now_unix_ms() as u64,
        ended_unix_ms: 0,
    };
    let result = segment(&spec, until, threads, &mut report, registry);
    report.seconds = started.elapsed().as_secs_f64();
    report.ended_unix_ms = crate::cache::store::now_unix_ms() as u64;
    if let Err(e) = &result {
        report.error = Some(e.to_string());
        report.input_error = e.exit_code() == 2;
    }
    let bytes = serde_json::to_vec_pretty(&report).map_err(|e| Error::Corrupt {
        path: report_path.to_owned(),
        message: e.to_string(),
    })?;
    crate::cache::atomic::write(report_path, &bytes)?;
    result
}

fn segment(
    spec: &TrialSpec,
    until: usize,
    threads: usize,
    report: &mut TrialReport,
    registry: &Registry,
) -> Result<()> {
    let kind = registry.get(&spec.parts.kind).ok_or_else(|| {
        spec_error(
            Path::new(&spec.stage),
            format!("unknown kind `{}`", spec.parts.kind),
        )
    })?;
    let tunable: &dyn Tunable = kind.tunable().ok_or_else(|| {
        Error::from(Diagnostic::new(format!(
            "kind {} cannot run as a tuning trial",
            spec.parts.kind
        )))
    })?;
    let store = ArtifactStore::open(&spec.cache, false)?;
    if !store.exists() {
        return Err(
            Diagnostic::new(format!("{} is not a covseg cache", spec.cache.display())).into(),
        );
    }
    let _gc_guard = store.lock_shared()?;
    let key = spec.parts.key();
    let outputs = kind.spec().output_files();
    let target = Target {
        parts: &spec.parts,
        sources: &spec.sources,
        stage: &spec.stage,
        pipeline: &spec.pipeline,
        outputs: &outputs,
    };
    let on_wait = || {
        tracing::info!(key = %key.short(), "waiting: another covseg process is running this trial");
    };
    let mut scores = Vec::new();
    let built = build(&store, &target, false, on_wait, |out_dir, work_dir| {
        let job = StageJob {
            inputs: spec.inputs.clone(),
            params: &spec.parts.params,
            seed: spec.parts.seed.unwrap_or(0),
            out_dir,
            work_dir,
            progress: &covseg_stages::NoProgress,
            engine: None,
        };
        let progress = run_guarded(threads, || tunable.run_until(&job, until))?;
        scores = progress.scores;
        Ok(progress.complete)
    })
    .map_err(failure)?;
    match built {
        Built::Hit(entry) => {
            report.scores = tunable.scores(&entry.out_dir()).map_err(failure)?;
            report.complete = true;
            report.cached = true;
        }
        Built::Ran(_) => {
            report.scores = scores;
            report.complete = true;
        }
        Built::Unfinished => report.scores = scores,
    }
    Ok(())
}

fn failure(f: crate::pipeline::kind::StageFailure) -> Error {
    if f.input_error {
        Diagnostic::new(f.message).into()
    } else {
        Error::StagesFailed {
            failures: vec![("trial".into(), f.message)],
            input_error: false,
        }
    }
}

/// One segment to run: the command line, and the files it reports to and logs into.
#[derive(Debug, Clone)]
pub struct TrialCommand {
    pub trial: usize,
    pub until: usize,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub report: PathBuf,
    pub log: PathBuf,
}

impl TrialCommand {
    /// `covseg trial SPEC --until N --threads T --report FILE`, with this executable.
    pub fn new(
        trial: usize,
        until: usize,
        spec: &Path,
        threads: usize,
        report: PathBuf,
        log: PathBuf,
    ) -> Result<Self> {
        let program = std::env::current_exe().map_err(|e| Error::io("<current executable>", e))?;
        let args = vec![
            OsString::from("trial"),
            spec.as_os_str().to_owned(),
            OsString::from("--until"),
            OsString::from(until.to_string()),
            OsString::from("--threads"),
            OsString::from(threads.to_string()),
            OsString::from("--report"),
            report.as_os_str().to_owned(),
        ];
        Ok(Self {
            trial,
            until,
            program,
            args,
            report,
            log,
        })
    }
}

/// Why a launched segment has no report.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchFailure {
    pub message: String,
    /// The machine lost it (a cancelled or preempted job, a failed node), not the work: running
    /// it again may succeed.
    pub retriable: bool,
}

impl LaunchFailure {
    fn fatal(message: String) -> Self {
        Self {
            message,
            retriable: false,
        }
    }
}

/// What became of a launched segment.
pub type Outcome = std::result::Result<TrialReport, LaunchFailure>;

/// A segment handed to a scheduler, with the id it goes by there (recorded in the journal, so a
/// coordinator that is killed and run again adopts the job instead of running it twice).
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub trial: usize,
    pub until: usize,
    pub job: String,
}

/// Reads a segment's report.
pub fn read_report(path: &Path) -> std::result::Result<TrialReport, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs trial commands somewhere and says when each has ended. The tune stage only talks to this,
/// so running the same commands through a cluster scheduler means another implementation.
pub trait TrialLauncher {
    /// Takes a command to run; a scheduler may hold it until `flush`.
    fn launch(&mut self, command: TrialCommand) -> Result<()>;
    /// Sends what `launch` took and names the jobs made (none for a local launcher).
    fn flush(&mut self) -> Result<Vec<Submission>> {
        Ok(Vec::new())
    }
    /// Takes over a segment an earlier coordinator submitted as `job`; `false` when there is
    /// nothing to take over and the segment must be launched again.
    fn adopt(&mut self, _command: TrialCommand, _job: &str) -> Result<bool> {
        Ok(false)
    }
    /// Waits for one launched command to end; its report, or why there is none.
    fn wait(&mut self) -> Option<(TrialCommand, Outcome)>;
}

/// Runs each command as a child process of this one (killed with it).
pub struct LocalLauncher {
    tx: mpsc::Sender<(TrialCommand, Outcome)>,
    rx: mpsc::Receiver<(TrialCommand, Outcome)>,
    running: usize,
}

impl Default for LocalLauncher {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Self { tx, rx, running: 0 }
    }
}

impl TrialLauncher for LocalLauncher {
    fn launch(&mut self, command: TrialCommand) -> Result<()> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&command.log)
            .map_err(|e| Error::io(&command.log, e))?;
        let _ = std::fs::remove_file(&command.report);
        let tx = self.tx.clone();
        self.running += 1;
        // The thread that starts the child waits for it: the child's parent-death signal fires
        // when this thread ends, so it must outlive the child.
        std::thread::spawn(move || {
            let result = run_child(&command, log).map_err(LaunchFailure::fatal);
            let _ = tx.send((command, result));
        });
        Ok(())
    }

    fn wait(&mut self) -> Option<(TrialCommand, Outcome)> {
        if self.running == 0 {
            return None;
        }
        let done = self.rx.recv().ok()?;
        self.running -= 1;
        Some(done)
    }
}

fn run_child(
    command: &TrialCommand,
    log: std::fs::File,
) -> std::result::Result<TrialReport, String> {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    die_with_parent(&mut cmd);
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {}: {e}", command.program.display()))?;
    match std::fs::read(&command.report) {
        Ok(_) => read_report(&command.report),
        Err(_) => Err(format!(
            "the trial process ended ({status}) without a report; its log is {}",
            command.log.display()
        )),
    }
}

/// Linux: the child gets SIGKILL when the thread that started it ends, so killing covseg (even
/// with SIGKILL) never leaves trials running that hold their keys' locks.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // A test seam: widens the window between fork and prctl so that a test can kill covseg inside
    // it (`tests/integration/tune.rs`). Unset, it costs nothing.
    let delay_ms = std::env::var("COVSEG_TEST_TRIAL_FORK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let delay = libc::timespec {
        tv_sec: (delay_ms / 1000) as libc::time_t,
        tv_nsec: ((delay_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: the closure runs in the forked child before exec and only calls nanosleep, prctl and
    // getppid, which are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if delay_ms > 0 {
                libc::nanosleep(&delay, std::ptr::null_mut());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then no signal will ever come,
            // and the trial would run on holding its key's lock. Do not start it.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the parent covseg has exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut std::process::Command) {}
