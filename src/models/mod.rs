//! Model folders on disk: teacher specifications, distilled students, and the
//! config-plus-safetensors layout they share.

pub mod model_dir;
pub mod sd;
pub mod spec;
pub mod student;
pub mod teacher;
