//! Datasets: the Kaggle `.npy` files, synthetic CT phantoms, and the train/validation split.

pub mod kaggle;
pub mod phantom;
pub mod split;
pub mod stats;
