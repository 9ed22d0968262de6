//! Run reports: the table (Markdown, CSV, JSON), sample grids (PNG) and charts (SVG).

pub mod chart;
pub mod finding;
pub mod grid;
pub mod machine;
pub mod run;
pub mod study;
pub mod table;
