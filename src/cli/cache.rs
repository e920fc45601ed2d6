//! `covseg cache ls | verify | gc`: look at, check and trim the artifact store.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::cache::digest::Digest;
use crate::cache::runlog;
use crate::cache::store::ArtifactStore;
use crate::error::{Diagnostic, Error, Result};

fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

pub fn ls(store: &ArtifactStore) -> Result<String> {
    let mut out = String::new();
    let entries = store.entries()?;
    let mut total = 0;
    let _ = writeln!(
        out,
        "{:12}  {:16}  {:14}  {:>10}  outputs",
        "key", "stage", "kind", "size"
    );
    for e in &entries {
        match e {
            Ok(entry) => {
                let r = &entry.record;
                total += r.bytes();
                let outputs: Vec<&str> = r.outputs.keys().map(String::as_str).collect();
                let _ = writeln!(
                    out,
                    "{:12}  {:16}  {:14}  {:>10}  {}",
                    r.key.short(),
                    r.stage,
                    r.parts.kind,
                    human_bytes(r.bytes()),
                    outputs.join(", ")
                );
            }
            Err((path, why)) => {
                let _ = writeln!(out, "{:12}  {why} ({})", "?", path.display());
            }
        }
    }
    let runs = runlog::load_all(&store.runs_dir()).len();
    let _ = writeln!(
        out,
        "{} entr{}, {} in all; {runs} run record(s)",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" },
        human_bytes(total)
    );
    Ok(out)
}

/// Re-hashes every entry; names each damaged one. With `fix`, damaged entries are removed so the
/// next run rebuilds them.
pub fn verify(store: &ArtifactStore, fix: bool) -> Result<(String, usize)> {
    let mut out = String::new();
    let mut damaged = 0;
    let entries = store.entries()?;
    for e in &entries {
        let (dir, problems) = match e {
            Ok(entry) => (entry.dir.clone(), store.verify(entry)),
            Err((path, why)) => (path.clone(), vec![why.clone()]),
        };
        if problems.is_empty() {
            continue;
        }
        damaged += 1;
        let name = e.as_ref().map_or_else(
            |_| String::new(),
            |entry| format!(" (stage {})", entry.record.stage),
        );
        let _ = writeln!(out, "DAMAGED {}{name}", dir.display());
        for p in problems {
            let _ = writeln!(out, "  {p}");
        }
        if fix {
            let _guard = store.lock_exclusive()?.ok_or_else(busy)?;
            store.remove(&dir)?;
            let _ = writeln!(out, "  removed; the next run rebuilds it");
        }
    }
    let _ = writeln!(
        out,
        "{} entr{} checked, {damaged} damaged",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" }
    );
    Ok((out, damaged))
}

fn busy() -> Error {
    Diagnostic::new("the cache is in use by a running `covseg run`")
        .help("wait for it to finish, then try again")
        .into()
}

/// Keeps the newest `keep_last` run records and every entry they reference; removes the rest,
/// and staging debris of killed runs.
pub fn gc(store: &ArtifactStore, keep_last: usize, dry_run: bool) -> Result<String> {
    let _guard = store.lock_exclusive()?.ok_or_else(busy)?;
    let runs = runlog::load_all(&store.runs_dir());
    let (kept, dropped) = runs.split_at(keep_last.min(runs.len()));
    // What the newest runs used, and what an outputs folder links to now.
    let keep: BTreeSet<Digest> = kept
        .iter()
        .flat_map(|(_, r)| r.stages.iter().filter_map(|s| s.key))
        .chain(crate::running::outputs::linked_keys(store, dry_run))
        .collect();
    let mut out = String::new();
    let (mut removed, mut freed) = (0usize, 0u64);
    for e in store.entries()? {
        let (dir, key, bytes, stage) = match &e {
            Ok(entry) => (
                entry.dir.clone(),
                Some(entry.record.key),
                entry.record.bytes(),
                entry.record.stage.clone(),
            ),
            Err((path, _)) => (path.clone(), None, 0, "?".into()),
        };
        if key.is_some_and(|k| keep.contains(&k)) {
            // Results a forced rerun replaced, still beside the current ones.
            if let Ok(entry) = &e
                && !dry_run
            {
                store.remove_stray_outputs(entry)?;
            }
            continue;
        }
        let _ = writeln!(
            out,
            "remove {} ({stage}, {})",
            key.map_or_else(|| dir.display().to_string(), |k| k.short()),
            human_bytes(bytes)
        );
        if !dry_run {
            store.remove(&dir)?;
        }
        removed += 1;
        freed += bytes;
    }
    if !dry_run {
        for (path, _) in dropped {
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        }
        store.clean_tmp()?;
        store.clean_work()?;
        // With every run excluded by the gc lock, lock files of keys without an entry are unused.
        let locks = store.root().join("locks");
        for item in std::fs::read_dir(&locks).into_iter().flatten().flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let live = name
                .strip_suffix(".lock")
                .and_then(Digest::from_hex)
                .is_some_and(|k| keep.contains(&k));
            if !live {
                let _ = std::fs::remove_file(item.path());
            }
        }
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    let _ = writeln!(
        out,
        "{verb} {removed} entr{} ({}) and {} run record(s); kept {} run(s) and {} entr{}",
        if removed == 1 { "y" } else { "ies" },
        human_bytes(freed),
        dropped.len(),
        kept.len(),
        keep.len(),
        if keep.len() == 1 { "y" } else { "ies" }
    );
    Ok(out)
}
