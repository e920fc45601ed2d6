//! `covseg serve`: a bundle as an HTTP endpoint. The HTTP edge lives here (routes, limits,
//! connections, shutdown); decoding, batching and segmentation are the stages crate's serving
//! core.

mod error;
mod infer;
mod listener;
mod metrics;
mod oip;
pub mod options;
mod routes;
mod state;
mod volume;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use covseg_stages::serving::batcher::{BatchConfig, Batcher, Model};
use covseg_stages::serving::decode::DecodeLimits;
use covseg_stages::serving::segment::{BundleModel, Recipe};
use covseg_stages::serving::volume::VolumeLimits;
use covseg_stages::training;

use crate::error::{Diagnostic, Error, Result};
pub use options::ServeArgs;
pub use routes::router;
pub use state::{AppState, Limits};

/// How long open connections may take to finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(20);
/// When the process is gone after SIGTERM at the latest (SageMaker kills 30 s after it).
const EXIT: Duration = Duration::from_secs(25);

/// The bundle folder to serve: the argument, the pipeline stage's current bundle, or SageMaker's.
fn resolve_bundle(args: &ServeArgs, pipeline: &Path) -> Result<(PathBuf, bool)> {
    if let Some(stage) = &args.stage {
        return Ok((stage_bundle(pipeline, stage)?, false));
    }
    match &args.bundle {
        // `docker run IMAGE serve` with ENTRYPOINT ["covseg", "serve"] passes a bare `serve`.
        Some(b) if b.as_os_str() == "serve" && !b.exists() => {
            Ok((PathBuf::from(options::SAGEMAKER_MODEL_DIR), true))
        }
        Some(b) => Ok((b.clone(), false)),
        None => {
            let dir = PathBuf::from(options::SAGEMAKER_MODEL_DIR);
            if dir.is_dir() {
                Ok((dir, true))
            } else {
                Err(Diagnostic::new("no bundle to serve")
                    .help("covseg serve BUNDLE_DIR, or covseg serve --stage train-final -p PIPELINE (or put a bundle in /opt/ml/model)")
                    .into())
            }
        }
    }
}

fn stage_bundle(pipeline_path: &Path, stage: &str) -> Result<PathBuf> {
    use crate::cache::hash_memo::HashMemo;
    use crate::cache::store::ArtifactStore;
    use crate::running::outputs;
    let registry = crate::adapters::registry();
    let (pipeline, dag) = crate::pipeline::load(pipeline_path, &registry)?;
    let index = pipeline.require_stage(stage)?;
    let kind = pipeline.stages[index].kind.spec();
    if !kind.outputs.iter().any(|o| o.name == "bundle") {
        return Err(Diagnostic::new(format!(
            "stage `{stage}` ({}) has no bundle to serve",
            kind.name
        ))
        .help("serve a train, train-final or evaluate stage")
        .into());
    }
    let store = ArtifactStore::open(&pipeline.cache_dir, false)?;
    let memo = HashMemo::open(store.memo_file());
    let target = format!("{stage}.bundle");
    let query = outputs::Query::parse(&target, &pipeline);
    let text = outputs::show(&pipeline, &dag, &store, &memo, &query, false)?;
    Ok(PathBuf::from(text.trim_end()))
}

/// The bundle's blake3 digest over its files (the model version).
fn version(dir: &Path) -> Result<String> {
    let files = crate::cache::digest::list_files(dir)?;
    let mut digests = Vec::with_capacity(files.len());
    for (rel, path) in files {
        digests.push((rel, crate::cache::digest::file(&path)?));
    }
    Ok(crate::cache::digest::tree(&digests).hex())
}

fn invalid(path: &Path, e: covseg_stages::Error) -> Error {
    Diagnostic::new(format!("{}: {e}", path.display()))
        .help(
            "serve a bundle folder written by a train or evaluate stage (covseg show train.bundle)",
        )
        .into()
}

fn read_thresholds(path: &Path) -> Result<training::Thresholds> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Diagnostic::new(format!(
            "{}: expected {{\"ggo\": p, \"consolidation\": p}}: {e}",
            path.display()
        ))
        .into()
    })
}

/// Runs the server until SIGTERM or Ctrl-C.
pub fn run(args: &ServeArgs, pipeline: &Path) -> Result<()> {
    let (dir, sagemaker) = resolve_bundle(args, pipeline)?;
    let (_, preprocessing, mut thresholds) =
        training::read_bundle_parts(&dir).map_err(|e| invalid(&dir, e))?;
    if let Some(path) = &args.thresholds {
        thresholds = read_thresholds(path)?;
    }
    let spacing = args
        .spacing
        .as_deref()
        .map(covseg_stages::serving::summary::parse_spacing)
        .transpose()
        .map_err(|e| Error::from(Diagnostic::new(format!("--spacing: {e}"))))?;
    let version = version(&dir)?;
    let host = args
        .host
        .clone()
        .unwrap_or_else(|| if sagemaker { "0.0.0.0" } else { "127.0.0.1" }.to_owned());
    let port = match args.port {
        Some(p) => p,
        None => match std::env::var("SAGEMAKER_BIND_TO_PORT") {
            Ok(v) => v.trim().parse().map_err(|_| {
                Error::from(Diagnostic::new(format!(
                    "SAGEMAKER_BIND_TO_PORT is `{v}`: expected a port number"
                )))
            })?,
            Err(_) => 8080,
        },
    };
    let timeout = match args.timeout {
        Some(t) => t,
        None => std::env::var("SAGEMAKER_MODEL_SERVER_TIMEOUT")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(60),
    };
    for (flag, value) in [
        ("--queue", args.queue),
        ("--max-batch", args.max_batch),
        ("--max-connections", args.max_connections),
        ("--max-side", args.max_side),
        ("--max-body", args.max_body),
        ("--max-volume-body", args.max_volume_body),
        ("--max-volume-slices", args.max_volume_slices),
    ] {
        if value == 0 {
            return Err(Diagnostic::new(format!("{flag} must be at least 1")).into());
        }
    }
    let limits = Limits {
        max_body: args.max_body,
        decode: DecodeLimits {
            max_side: args.max_side,
            ..DecodeLimits::default()
        },
        timeout: Duration::from_secs(timeout.max(1)),
        body_timeout: Duration::from_secs(args.body_timeout.max(1)),
        queue: args.queue,
        in_flight: args.queue + args.max_batch + 2,
        max_batch: args.max_batch,
        volume: VolumeLimits {
            max_side: args.max_side,
            max_slices: args.max_volume_slices,
            ..VolumeLimits::default()
        },
        max_volume_body: args.max_volume_body,
        volume_timeout: Duration::from_secs(args.volume_timeout.max(1)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("<tokio runtime>", e))?;
    let recipe = Recipe {
        preprocessing,
        thresholds,
    };
    let result = runtime.block_on(async move {
        let address = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind(&address).await.map_err(|e| {
            Error::from(
                Diagnostic::new(format!("cannot listen on {address}: {e}"))
                    .help("choose another --port (0 picks a free one), or stop what uses it"),
            )
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::io("<socket>", e))?;
        let started = Instant::now();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (device, tta, max_batch, load_dir) =
            (args.device, args.tta, args.max_batch, dir.clone());
        let batcher = Batcher::start(
            BatchConfig {
                max_batch: args.max_batch,
                max_delay: Duration::from_millis(args.max_delay_ms),
                queue: args.queue,
            },
            move || {
                let device = training::select_device(device).map_err(|e| e.to_string())?;
                let bundle =
                    training::load_bundle(&load_dir, &device.device).map_err(|e| e.to_string())?;
                Ok(Box::new(BundleModel {
                    bundle,
                    tta,
                    max_batch,
                }) as Box<dyn Model>)
            },
            move |result| {
                let _ = ready_tx.send(result);
            },
        );
        let state = Arc::new(AppState::new(
            recipe,
            version.clone(),
            batcher,
            limits,
            spacing,
        ));
        let app = router(Arc::clone(&state));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let shown = if bound.ip().is_unspecified() {
            format!("http://127.0.0.1:{}/", bound.port())
        } else {
            format!("http://{bound}/")
        };
        println!(
            "covseg serve: {} (model {}) at {shown}",
            dir.display(),
            &version[..16]
        );
        println!("{}; Ctrl-C stops", routes::NOTICE);
        let server = tokio::spawn(listener::serve(
            listener,
            app,
            listener::ConnectionLimits {
                header_timeout: Duration::from_secs(args.header_timeout.max(1)),
                write_timeout: Duration::from_secs(args.body_timeout.max(1)),
                max_connections: args.max_connections,
                drain: DRAIN,
            },
            stop_rx,
        ));
        let load_state = Arc::clone(&state);
        let load_stop = stop_tx.clone();
        let loading = tokio::spawn(async move {
            match ready_rx.await {
                Ok(Ok(())) => {
                    load_state.set_loaded();
                    tracing::info!(
                        "model loaded and warmed up in {:.1} s: ready",
                        started.elapsed().as_secs_f64()
                    );
                    Ok(())
                }
                Ok(Err(e)) => {
                    load_state.set_draining();
                    let _ = load_stop.send(true);
                    Err(e)
                }
                Err(_) => {
                    let _ = load_stop.send(true);
                    Err("the model thread stopped".to_owned())
                }
            }
        });
        let signal_state = Arc::clone(&state);
        let stop_at = Arc::new(std::sync::OnceLock::<Instant>::new());
        let signal_stop_at = Arc::clone(&stop_at);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = signal_stop_at.set(Instant::now());
            tracing::info!(
                "stopping: finishing the requests in progress (at most {} s)",
                EXIT.as_secs()
            );
            signal_state.set_draining();
            let _ = stop_tx.send(true);
        });
        let cut = server.await.unwrap_or(0);
        if cut > 0 {
            tracing::warn!(
                "{cut} connections were still open after {} s and were closed",
                DRAIN.as_secs()
            );
        }
        // One deadline for the whole stop: the queue gets what the connections left of it.
        let left = EXIT
            .saturating_sub(stop_at.get().map_or(Duration::ZERO, Instant::elapsed))
            .saturating_sub(Duration::from_millis(500));
        let closing = Arc::clone(&state);
        let finished = tokio::task::spawn_blocking(move || closing.batcher.close_within(left))
            .await
            .unwrap_or(false);
        if !finished {
            tracing::warn!("the model thread was still busy at the stop deadline");
        }
        let loaded = if loading.is_finished() {
            loading.await.unwrap_or(Ok(()))
        } else {
            loading.abort();
            Ok(())
        };
        if let Err(e) = loaded {
            return Err(invalid_load(&dir, &e));
        }
        tracing::info!("stopped");
        Ok(())
    });
    // Blocking tasks still decoding for cut-off clients are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

fn invalid_load(dir: &Path, message: &str) -> Error {
    Diagnostic::new(format!(
        "{}: cannot load the model: {message}",
        dir.display()
    ))
    .help("serve a bundle folder written by a train or evaluate stage (covseg show train.bundle)")
    .into()
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
#[cfg(test)]
mod tests;
