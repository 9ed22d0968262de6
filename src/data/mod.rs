//! Datasets: points (or images, or latents) with optional class labels.

pub mod captioned;
pub mod dataset;
pub mod idx;
pub mod image_folder;
mod load;
pub mod npy;
pub mod npy_rows;
pub mod toy;

pub use dataset::Dataset;
