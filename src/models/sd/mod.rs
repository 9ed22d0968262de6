//! Stable Diffusion teachers from diffusers pipeline folders and single-file checkpoints
//! (`sd:PATH`; SD 1.x/2.x/SDXL): the folder or file and its components, the scheduler config's forward process, prompts to text
//! conditioning, the UNet as a `Denoiser`, and decoding latents to PNG files.

pub mod captioned_latents;
pub mod checkpoint;
pub mod folder;
pub mod images;
pub mod json;
pub mod latents;
pub mod pipeline;
pub mod prompts;
pub mod sampling_cost;
pub mod saved_maps;
pub mod scheduler;
pub mod single_file;
pub mod student;
pub mod teacher;
pub mod text;
pub mod training_memory;
pub mod weights;

pub use teacher::SdTeacher;

#[cfg(test)]
mod checkpointing_tests;
#[cfg(test)]
mod stream_memory;
#[cfg(test)]
mod test_util;
