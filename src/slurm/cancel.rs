//! Jobs this process has in flight, cancelled when it is interrupted: Ctrl-C or SIGTERM of a
//! coordinating `covseg run` must not leave its jobs holding the cluster. SIGKILL cannot be
//! caught; a rerun then adopts the jobs still running (the tune journal records their ids).

use std::collections::BTreeSet;
use std::sync::{Mutex, Once};

use crate::slurm::job::JobId;

static LIVE: Mutex<BTreeSet<JobId>> = Mutex::new(BTreeSet::new());
static HANDLER: Once = Once::new();

fn live() -> std::sync::MutexGuard<'static, BTreeSet<JobId>> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records jobs as in flight, and makes sure a signal cancels them.
pub fn track(ids: &[JobId]) {
    install();
    live().extend(ids.iter().copied());
}

/// The jobs have ended (or were handed over): a signal no longer cancels them.
pub fn untrack(ids: &[JobId]) {
    let mut live = live();
    for id in ids {
        live.remove(id);
    }
}

/// On SIGINT, SIGTERM or SIGHUP: cancel every tracked job, then exit as the signal would have.
fn install() {
    HANDLER.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "cannot catch signals; an interrupted run leaves its Slurm jobs running: {e}"
                );
                return;
            }
        };
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let ids: Vec<JobId> = live().iter().copied().collect();
                if !ids.is_empty() {
                    let list: Vec<String> = ids.iter().map(JobId::to_string).collect();
                    eprintln!(
                        "covseg: interrupted; cancelling Slurm job(s) {}",
                        list.join(" ")
                    );
                    if let Err(e) = crate::slurm::client::cancel(&ids) {
                        eprintln!("covseg: {e}");
                    }
                }
                std::process::exit(128 + signal);
            }
        });
    });
}
