//! Datasets: the Kaggle `.npy` files, image folders, synthetic CT phantoms, intensity
//! preprocessing, the train/validation split and dataset statistics.

pub mod eda;
pub mod folder;
pub mod intensity;
pub mod kaggle;
pub mod labels;
pub mod npy;
pub mod phantom;
pub mod resize;
pub mod split;
pub mod stats;
