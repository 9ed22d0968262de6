//! Run reports: the table (Markdown, CSV, JSON), sample grids (PNG) and charts (SVG).

pub mod chart;
pub mod disagreement;
pub mod finding;
pub mod grid;
pub mod horizon_steps;
pub mod length_criterion;
pub mod machine;
pub mod rank_correlation;
pub mod run;
pub mod study;
pub mod study_findings;
pub mod study_record;
pub mod study_summary;
pub mod sweep_order;
pub mod sweep_report;
pub mod table;
pub mod teacher_kd;
