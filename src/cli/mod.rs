//! The command line: arguments (clap) and the dispatch to the engine.

mod cache;
mod kinds;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::adapters;
use crate::cache::digest;
use crate::cache::hash_memo::HashMemo;
use crate::cache::store::ArtifactStore;
use crate::error::{Diagnostic, Error, Result};
use crate::pipeline::config::Pipeline;
use crate::pipeline::dag::{Dag, DagFormat};
use crate::running::executor::{self, RunOptions};
use crate::running::ui::{LogFormat, Ui};
use crate::running::{explain, metrics, outputs, plan};

/// Reproducible COVID-19 lesion segmentation of lung CT, from a declarative pipeline.
///
/// Exit codes: 0 success, 1 a stage failed (or `cache verify` found damage), 2 a usage,
/// configuration or input error.
#[derive(Parser)]
#[command(name = "covseg", version, about, long_about)]
pub struct Cli {
    /// The pipeline file.
    #[arg(
        long,
        short = 'p',
        global = true,
        default_value = "pipeline.toml",
        value_name = "FILE"
    )]
    pipeline: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// More log detail (-v, -vv).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Warnings and errors only.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: stale stages run, cached ones are reused.
    Run {
        /// Run only this stage and whatever upstream of it is stale (repeatable).
        #[arg(long = "stage", short = 's', value_name = "NAME")]
        stages: Vec<String>,
        /// Rerun the named stages (all without --stage) even when cached.
        #[arg(long)]
        force: bool,
        /// Print the plan instead of running.
        #[arg(long)]
        dry_run: bool,
        /// Most stages at once (default: the CPU limit).
        #[arg(long, short = 'j', value_name = "N")]
        jobs: Option<usize>,
    },
    /// Show each stage's state: cached, stale and why, or blocked.
    Plan {
        /// Only this stage and its upstream (repeatable).
        #[arg(long = "stage", short = 's', value_name = "NAME")]
        stages: Vec<String>,
    },
    /// Show a stage's key parts and what changed since its last run.
    Explain { stage: String },
    /// Compare the metrics of the newest runs (every stage with a `metrics` JSON output, such as
    /// evaluate), with the params that differ between them.
    Metrics {
        /// How many runs with metrics to show, newest first.
        #[arg(long, value_name = "N", default_value_t = 10)]
        runs: usize,
        /// Print JSON.
        #[arg(long, conflicts_with = "md")]
        json: bool,
        /// Print a Markdown table.
        #[arg(long)]
        md: bool,
        /// Also draw each stage's score per run into this PNG.
        #[arg(long, value_name = "FILE")]
        plot: Option<PathBuf>,
    },
    /// Print the path of a stage's current output: `covseg show evaluate.report`.
    Show {
        /// STAGE.OUTPUT, or STAGE for a stage with one output (or with --json).
        #[arg(value_name = "STAGE[.OUTPUT]")]
        target: String,
        /// Print every output of the stage as JSON (stage, kind, key, output → path).
        #[arg(long)]
        json: bool,
    },
    /// Print the stage graph.
    Dag {
        #[arg(long, value_enum, default_value = "text")]
        format: DagFormat,
    },
    /// List the stage kinds with their inputs, outputs and params.
    Kinds,
    /// Inspect, check and trim the artifact cache.
    Cache {
        /// The cache folder (default: the pipeline's).
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Write synthetic CT phantoms as Kaggle-format .npy files (images_<prefix>.npy, masks_<prefix>.npy).
    Synth {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value_t = 16)]
        slices: usize,
        #[arg(long, default_value_t = 128)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "medseg")]
        prefix: String,
    },
    /// Run one stage kind outside the pipeline and cache: `covseg exec split --input medseg_images=a.npy ... --out DIR`.
    Exec {
        kind: String,
        /// An input as NAME=PATH (repeatable).
        #[arg(long = "input", short = 'i', value_name = "NAME=PATH")]
        inputs: Vec<String>,
        /// A param as KEY=VALUE, VALUE in TOML syntax or a bare string (repeatable).
        #[arg(long = "param", short = 'P', value_name = "KEY=VALUE")]
        params: Vec<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Folder for the outputs.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Build one stage of the pipeline in this process, against the cache (its upstream stages
    /// must be cached): what a Slurm job of a stage runs. `covseg stage train -p pipeline.toml`.
    Stage {
        /// The stage's name.
        name: String,
        /// Refuse to build unless the stage resolves to this key (hex), as the submitter saw it.
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
        /// Worker threads (default: the stage's resources.cpu).
        #[arg(long, value_name = "N")]
        threads: Option<u32>,
        /// Rebuild even when cached.
        #[arg(long)]
        force: bool,
    },
    /// Run one segment of a tuning trial: `covseg trial SPEC --until N --report FILE`. A tune
    /// stage writes the spec (in its work folder in the cache) and runs these commands; another
    /// executor (a cluster scheduler) may run the same commands on machines sharing the cache.
    Trial {
        /// The trial's spec file.
        spec: PathBuf,
        /// Run until this many epochs are done (the trial goes on from its checkpoint).
        #[arg(long, value_name = "EPOCHS")]
        until: usize,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Where to write the JSON report (scores per epoch, complete, error).
        #[arg(long, value_name = "FILE")]
        report: PathBuf,
    },
    /// Serve a bundle as an HTTP endpoint (SageMaker and Open Inference Protocol routes, a web
    /// viewer at /): `covseg serve --stage train-final -p examples/demo.toml`.
    Serve(crate::serve::ServeArgs),
    /// Print blake3 digests of files, as b3sum does.
    Hash {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List the entries.
    Ls,
    /// Re-hash every entry and name the damaged ones (exit code 1 if any).
    Verify {
        /// Remove damaged entries so the next run rebuilds them.
        #[arg(long)]
        fix: bool,
    },
    /// Remove entries that none of the newest N runs used.
    Gc {
        #[arg(long, value_name = "N")]
        keep_last: usize,
        #[arg(long)]
        dry_run: bool,
    },
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe (`covseg dag | head`) is not a failure.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("<stdout>", e)),
        _ => Ok(()),
    }
}

fn stage_indices(pipeline: &Pipeline, names: &[String]) -> Result<Vec<usize>> {
    names.iter().map(|n| pipeline.require_stage(n)).collect()
}

pub fn execute(cli: Cli) -> Result<()> {
    let verbosity = if cli.quiet {
        -1
    } else {
        cli.verbose.min(3) as i8
    };
    let ui = Ui::new(cli.log_format, verbosity);
    let registry = adapters::registry();
    let load = || crate::pipeline::load(&cli.pipeline, &registry);
    match cli.command {
        Command::Run {
            stages,
            force,
            dry_run,
            jobs,
        } => {
            let (pipeline, dag) = load()?;
            let selected = stage_indices(&pipeline, &stages)?;
            let order = dag.selection(&selected);
            if !dry_run {
                crate::pipeline::resolve::check_external(&pipeline, &order)?;
            }
            let store = ArtifactStore::open(&pipeline.cache_dir, !dry_run)?;
            let memo = HashMemo::open(store.memo_file());
            if dry_run {
                let forced = if !force {
                    vec![]
                } else if selected.is_empty() {
                    order.clone()
                } else {
                    selected.clone()
                };
                let rows = plan::plan(&pipeline, &dag, &store, &memo, &order, &forced)?;
                return print(&plan::render(&pipeline, &rows));
            }
            let options = RunOptions {
                selected,
                force,
                jobs: jobs.unwrap_or(pipeline.limits.cpu as usize),
            };
            let record = executor::run(&pipeline, &dag, &store, &memo, &options, &ui);
            if matches!(&record, Ok(_) | Err(Error::StagesFailed { .. })) {
                refresh_outputs(&pipeline, &dag, &store, &memo);
            }
            match record {
                Ok(record) => print(&executor::summary(&record)),
                Err(e) => {
                    if let Some((_, last)) = crate::cache::runlog::load_all(&store.runs_dir())
                        .into_iter()
                        .next()
                        && matches!(e, Error::StagesFailed { .. })
                    {
                        print(&executor::summary(&last))?;
                    }
                    Err(e)
                }
            }
        }
        Command::Plan { stages } => {
            let (pipeline, dag) = load()?;
            let selected = stage_indices(&pipeline, &stages)?;
            let order = dag.selection(&selected);
            let store = ArtifactStore::open(&pipeline.cache_dir, false)?;
            let memo = HashMemo::open(store.memo_file());
            let rows = plan::plan(&pipeline, &dag, &store, &memo, &order, &[])?;
            print(&plan::render(&pipeline, &rows))
        }
        Command::Explain { stage } => {
            let (pipeline, dag) = load()?;
            let index = pipeline.require_stage(&stage)?;
            let store = ArtifactStore::open(&pipeline.cache_dir, false)?;
            let memo = HashMemo::open(store.memo_file());
            print(&explain::explain(&pipeline, &dag, &store, &memo, index)?)
        }
        Command::Metrics {
            runs,
            json,
            md,
            plot,
        } => {
            let (pipeline, _) = load()?;
            let store = ArtifactStore::open(&pipeline.cache_dir, false)?;
            let format = match (json, md) {
                (true, _) => metrics::Format::Json,
                (_, true) => metrics::Format::Markdown,
                _ => metrics::Format::Text,
            };
            print(&metrics::metrics(
                &pipeline,
                &registry,
                &store,
                runs,
                format,
                plot.as_deref(),
            )?)
        }
        Command::Show { target, json } => {
            let (pipeline, dag) = load()?;
            let store = ArtifactStore::open(&pipeline.cache_dir, false)?;
            let memo = HashMemo::open(store.memo_file());
            let query = outputs::Query::parse(&target, &pipeline);
            print(&outputs::show(
                &pipeline, &dag, &store, &memo, &query, json,
            )?)
        }
        Command::Dag { format } => {
            let (pipeline, dag) = load()?;
            print(&dag.render(&pipeline, format))
        }
        Command::Kinds => print(&kinds::text(&registry)),
        Command::Cache { cache, command } => {
            let dir = match cache {
                Some(dir) => dir,
                None => load()?.0.cache_dir,
            };
            let store = ArtifactStore::open(&dir, false)?;
            if !store.exists() {
                return Err(Diagnostic::new(format!(
                    "{} is not a covseg cache (no objects/ folder)",
                    dir.display()
                ))
                .help("run the pipeline first, or pass --cache DIR")
                .into());
            }
            match command {
                CacheCommand::Ls => print(&cache::ls(&store)?),
                CacheCommand::Verify { fix } => {
                    let (text, damaged) = cache::verify(&store, fix)?;
                    print(&text)?;
                    if damaged > 0 && !fix {
                        Err(Error::Damaged(damaged))
                    } else {
                        Ok(())
                    }
                }
                CacheCommand::Gc { keep_last, dry_run } => {
                    print(&cache::gc(&store, keep_last, dry_run)?)
                }
            }
        }
        Command::Synth {
            out,
            slices,
            size,
            seed,
            prefix,
        } => synth(&out, slices, size, seed, &prefix),
        Command::Exec {
            kind,
            inputs,
            params,
            seed,
            out,
        } => print(&crate::running::exec::exec(
            &registry, &kind, &inputs, &params, seed, &out,
        )?),
        Command::Stage {
            name,
            key,
            threads,
            force,
        } => {
            let (pipeline, dag) = load()?;
            let index = pipeline.require_stage(&name)?;
            let store = ArtifactStore::open(&pipeline.cache_dir, true)?;
            let memo = HashMemo::open(store.memo_file());
            let options = crate::running::single::SingleOptions {
                key: key.as_deref(),
                threads,
                force,
            };
            let (entry, outcome) =
                crate::running::single::run(&pipeline, &dag, &store, &memo, index, &options, &ui)?;
            print(&format!(
                "{}  {}  {}\n",
                name,
                outcome.label(),
                entry.record.key.short()
            ))
        }
        Command::Trial {
            spec,
            until,
            threads,
            report,
        } => crate::tuning::trial::run(&spec, until, threads, &report, &registry),
        Command::Serve(args) => crate::serve::run(&args, &cli.pipeline),
        Command::Hash { files } => {
            let mut text = String::new();
            for f in &files {
                text.push_str(&format!("{}  {}\n", digest::file(f)?, f.display()));
            }
            print(&text)
        }
    }
}

/// Points the outputs folder at the current results. A folder that cannot be updated is a
/// warning: the run itself succeeded, and its results are in the cache.
fn refresh_outputs(pipeline: &Pipeline, dag: &Dag, store: &ArtifactStore, memo: &HashMemo) {
    let Some(dir) = &pipeline.outputs_dir else {
        return;
    };
    let refreshed = outputs::current(pipeline, dag, store, memo)
        .and_then(|current| outputs::refresh(pipeline, store, &current, dir));
    match refreshed {
        Ok(r) => tracing::debug!(
            "outputs folder {}: {} placed, {} unchanged, {} removed",
            dir.display(),
            r.placed,
            r.unchanged,
            r.removed
        ),
        Err(e) => tracing::warn!("cannot update the outputs folder {}: {e}", dir.display()),
    }
}

fn synth(out: &Path, slices: usize, size: usize, seed: u64, prefix: &str) -> Result<()> {
    use covseg_stages::data::{kaggle, phantom};
    let config = phantom::PhantomConfig {
        slices,
        size,
        ..Default::default()
    };
    let domain = |e: covseg_stages::Error| -> Error {
        if e.is_input_error() {
            Diagnostic::new(e.to_string()).into()
        } else {
            Error::Corrupt {
                path: out.to_owned(),
                message: e.to_string(),
            }
        }
    };
    config.validate().map_err(domain)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let set = phantom::generate(&config, seed, &covseg_stages::NoProgress).map_err(domain)?;
    let images = out.join(format!("images_{prefix}.npy"));
    let masks = out.join(format!("masks_{prefix}.npy"));
    // Written beside the target and renamed, so an interrupted run leaves no half file.
    for (path, write) in [
        (
            &images,
            Box::new(|p: &Path| kaggle::write_images(p, &set.images))
                as Box<dyn Fn(&Path) -> covseg_stages::Result<()>>,
        ),
        (
            &masks,
            Box::new(|p: &Path| kaggle::write_masks(p, &set.masks)),
        ),
    ] {
        let tmp = path.with_extension("npy.partial");
        write(&tmp).map_err(domain)?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    }
    print(&format!(
        "wrote {} and {} ({slices} slices of {size}×{size})\n",
        images.display(),
        masks.display()
    ))
}
