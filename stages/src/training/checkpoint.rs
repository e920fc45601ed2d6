//! Resumable training: at the end of every epoch the model, the optimiser state, the best weights
//! so far and the loop's state go into a new folder of the stage's work folder, published by an
//! atomic rename, so a killed run resumes from its last finished epoch.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::{BurnpackStore, ModuleSnapshot};
use serde::{Deserialize, Serialize};

use super::early_stopping::EarlyStopping;
use super::history::EpochRecord;
use crate::model::Unet;
use crate::{Error, Result};

const MODEL: &str = "model.bpk";
const OPTIMIZER: &str = "optimizer.bpk";
const BEST: &str = "best.bpk";
const STATE: &str = "state.json";
/// Names the newest complete checkpoint folder; replaced atomically.
const LATEST: &str = "latest";

/// Everything of the training loop besides tensors. The epoch order and the per-epoch RNG seeds
/// derive from (seed, epoch), so the epoch count is the whole random state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub epochs_done: usize,
    pub steps_done: usize,
    pub stopping: EarlyStopping,
    pub history: Vec<EpochRecord>,
    /// Early stopping fired: nothing is left to train.
    pub stopped: bool,
}

impl TrainState {
    pub fn new(patience: usize) -> Self {
        Self {
            epochs_done: 0,
            steps_done: 0,
            stopping: EarlyStopping::new(patience),
            history: Vec::new(),
            stopped: false,
        }
    }
}

/// The checkpoints under a stage's work folder.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Writes `text` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn save_module(module: &Unet, path: &Path) -> Result<()> {
    // Burnpack keeps each parameter's id, which the optimiser state is keyed by.
    let mut store = BurnpackStore::from_file(path).overwrite(true);
    module
        .save_into(&mut store)
        .map_err(|e| Error::invalid_data(path, format!("cannot save weights: {e}")))
}

/// Loads weights saved by [`save_module`] into `module`; every parameter must be there.
pub fn load_module(module: &mut Unet, path: &Path) -> Result<()> {
    let mut store = BurnpackStore::from_file(path);
    let result = module
        .load_from(&mut store)
        .map_err(|e| Error::invalid_data(path, format!("cannot load weights: {e}")))?;
    if let Some(error) = result.errors.first() {
        return Err(Error::invalid_data(
            path,
            format!("weights do not fit: {error}"),
        ));
    }
    if let Some((name, _)) = result.missing.first() {
        return Err(Error::invalid_data(
            path,
            format!("{} parameters missing, e.g. {name}", result.missing.len()),
        ));
    }
    Ok(())
}

impl Checkpoints {
    pub fn new(work_dir: &Path) -> Self {
        Self {
            root: work_dir.join("checkpoints"),
        }
    }

    fn latest(&self) -> Result<Option<PathBuf>> {
        let pointer = self.root.join(LATEST);
        match std::fs::read_to_string(&pointer) {
            Ok(name) => Ok(Some(self.root.join(name.trim()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(pointer, e)),
        }
    }

    /// Saves the end of an epoch. `model` is a validation snapshot (`valid()`), whose BatchNorm
    /// running statistics are merged; `improved` says whether it is the new best.
    pub fn save(
        &self,
        state: &TrainState,
        model: &Unet,
        optimizer: &ModuleOptimizer,
        improved: bool,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let previous = self.latest()?;
        let name = format!("epoch_{:05}", state.epochs_done);
        let dir = self.root.join(&name);
        let tmp = self.root.join(format!("{name}.tmp"));
        // Debris of a run killed while writing this very epoch.
        for stale in [&tmp, &dir] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(io(stale))?;
            }
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        save_module(model, &tmp.join(MODEL))?;
        let optimizer_path = tmp.join(OPTIMIZER);
        optimizer.save(&optimizer_path).map_err(|e| {
            Error::invalid_data(
                &optimizer_path,
                format!("cannot save the optimiser state: {e}"),
            )
        })?;
        let best = tmp.join(BEST);
        match previous.as_ref().filter(|_| !improved) {
            // Unchanged best: share the previous folder's file instead of writing it again.
            Some(previous) => std::fs::hard_link(previous.join(BEST), &best)
                .or_else(|_| std::fs::copy(previous.join(BEST), &best).map(drop))
                .map_err(io(&best))?,
            None => save_module(model, &best)?,
        }
        let text = serde_json::to_string_pretty(state)
            .map_err(|e| Error::invalid_data(tmp.join(STATE), e.to_string()))?;
        std::fs::write(tmp.join(STATE), text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        write_atomic(&self.root.join(LATEST), &name)?;
        if let Some(previous) = previous.filter(|p| *p != dir) {
            std::fs::remove_dir_all(&previous).map_err(io(&previous))?;
        }
        Ok(())
    }

    /// Restores the last checkpoint into `model` (on its device) and `optimizer`, or returns
    /// `None` when there is none.
    pub fn resume(
        &self,
        model: &mut Unet,
        optimizer: &mut ModuleOptimizer,
    ) -> Result<Option<TrainState>> {
        let Some(dir) = self.latest()? else {
            return Ok(None);
        };
        let state_path = dir.join(STATE);
        let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
        let state: TrainState = serde_json::from_str(&text)
            .map_err(|e| Error::invalid_data(&state_path, format!("damaged checkpoint: {e}")))?;
        load_module(model, &dir.join(MODEL))?;
        let optimizer_path = dir.join(OPTIMIZER);
        *optimizer = optimizer.clone().load(&optimizer_path).map_err(|e| {
            Error::invalid_data(&optimizer_path, format!("damaged optimiser state: {e}"))
        })?;
        Ok(Some(state))
    }

    /// The best weights of the last checkpoint.
    pub fn best(&self) -> Result<PathBuf> {
        self.latest()?
            .map(|dir| dir.join(BEST))
            .ok_or_else(|| Error::invalid_data(&self.root, "no checkpoint was written"))
    }
}

/// The module's parameters as flat vectors, in visiting order (for comparing two modules).
pub fn parameters(module: &Unet) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.0.push(
                param
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec()
                    .unwrap_or_default(),
            );
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}
