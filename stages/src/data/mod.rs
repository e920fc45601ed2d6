//! Datasets: the Kaggle `.npy` files, image folders, CT volumes with label volumes, synthetic CT
//! phantoms, intensity preprocessing and pixel spacing, the train/validation split and dataset
//! statistics.

pub mod eda;
pub mod folder;
pub mod intensity;
pub mod kaggle;
pub mod labels;
pub mod npy;
pub mod phantom;
pub mod resize;
pub mod spacing;
pub mod split;
pub mod stats;
pub mod volumes;
