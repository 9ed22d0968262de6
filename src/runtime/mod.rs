//! What every stage runs on: the device, seeded random streams, stop signals, crash-safe
//! file output, content fingerprints of input files, finiteness and memory checks at the edges, progress bars, and the shipped assets' location.

pub mod assets;
pub mod bucket;
pub mod device;
pub mod files;
pub mod fingerprint;
pub mod finite;
pub mod limits;
pub mod memory;
pub mod message;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod noise;
pub mod pickle_check;
pub mod progress;
pub mod ranks;
pub mod signals;
pub mod tensor_file;
pub mod torch_archive;
