//! Training the U-Net on the augmented shards: config, data, loss, schedule, early stopping,
//! checkpoints to resume from, the device, and the bundle later stages load.

mod bundle;
mod checkpoint;
mod config;
mod data;
mod device;
mod early_stopping;
mod history;
mod loss;
mod schedule;
mod train;

pub use bundle::{
    Bundle, Thresholds, load as load_bundle, read_parts as read_bundle_parts, write as write_bundle,
};

/// The weights file's name inside a bundle folder.
pub fn bundle_weights_file() -> &'static str {
    bundle::WEIGHTS
}
pub use checkpoint::{Checkpoints, TrainState, parameters};
pub use config::{EncoderWeights, LossConfig, TrainConfig};
pub use data::{TARGET_LABELS, TrainingItems, Validation, epoch_order};
pub use device::{DeviceChoice, TrainDevice, class as device_class, select as select_device};
pub use early_stopping::{EarlyStopping, Verdict};
pub use history::{ClassF1, EpochRecord};
pub use loss::segmentation_loss;
pub use schedule::LrSchedule;
pub use train::{TrainInputs, TrainOutputs, TrainReport, train, train_until};
