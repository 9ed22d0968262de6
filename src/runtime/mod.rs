//! What every stage runs on: the device, seeded random streams, stop signals and the
//! shipped assets' location.

pub mod assets;
pub mod device;
pub mod noise;
pub mod signals;
