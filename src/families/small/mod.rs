//! The small-model family (`family::SmallFamily`).

pub mod distill;
pub mod evaluate;
pub mod family;
