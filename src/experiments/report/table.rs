//! The paper's table from a run: per-seed rows aggregated to mean ± std per
//! (method, steps), written as Markdown, CSV and JSON.

use crate::eval::records::{Row, COLUMNS};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub method: String,
    pub steps: usize,
    pub seeds: usize,
    /// (column, mean, sample std) per metric.
    pub values: Vec<(String, f64, f64)>,
}

impl Summary {
    pub fn mean(&self, column: &str) -> f64 {
        self.values.iter().find(|v| v.0 == column).map_or(f64::NAN, |v| v.1)
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Groups rows by (method, steps) in order of first appearance.
pub fn summarise(rows: &[Row]) -> Vec<Summary> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in rows {
        if !keys.iter().any(|k| k.0 == r.method && k.1 == r.steps) {
            keys.push((r.method.clone(), r.steps));
        }
    }
    keys.into_iter()
        .map(|(method, steps)| {
            let group: Vec<&Row> = rows.iter().filter(|r| r.method == method && r.steps == steps).collect();
            let values = COLUMNS
                .iter()
                .map(|(name, get)| {
                    let (m, s) = mean_std(&group.iter().map(|r| get(&r.metrics)).collect::<Vec<_>>());
                    (name.to_string(), m, s)
                })
                .collect();
            Summary {
                seeds: group.len(),
                method,
                steps,
                values,
            }
        })
        .collect()
}

fn fmt(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e4) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

pub fn markdown(summary: &[Summary]) -> String {
    let mut s = String::from("| method | steps |");
    for (name, _) in COLUMNS {
        s.push_str(&format!(" {name} |"));
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---|".repeat(COLUMNS.len()));
    s.push('\n');
    for row in summary {
        s.push_str(&format!("| {} | {} |", row.method, row.steps));
        for (_, mean, std) in &row.values {
            if row.seeds > 1 {
                s.push_str(&format!(" {} ± {} |", fmt(*mean), fmt(*std)));
            } else {
                s.push_str(&format!(" {} |", fmt(*mean)));
            }
        }
        s.push('\n');
    }
    s
}

pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from("method,steps,seed");
    for (name, _) in COLUMNS {
        s.push_str(&format!(",{}", name.replace(' ', "_").replace(['(', ')'], "")));
    }
    s.push('\n');
    for r in rows {
        s.push_str(&format!("{},{},{}", r.method, r.steps, r.seed));
        for (_, get) in COLUMNS {
            s.push_str(&format!(",{}", get(&r.metrics)));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::records::Metrics;

    fn row(method: &str, steps: usize, seed: u64, v: f64) -> Row {
        let m = Metrics {
            ode_error_latent: v,
            ode_error_pixel: v,
            fd_teacher: v,
            fd_data: v,
            kd_data: v,
            precision: v,
            recall: v,
            density: v,
            coverage: v,
            class_accuracy: v,
        };
        Row {
            method: method.into(),
            steps,
            seed,
            metrics: m,
        }
    }

    #[test]
    fn summary_is_mean_and_sample_std_per_group() {
        let rows = vec![
            row("CM", 1, 0, 1.0),
            row("CM", 1, 1, 3.0),
            row("Direct", 1, 0, 2.0),
            row("Direct", 1, 1, 2.0),
        ];
        let s = summarise(&rows);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].method.as_str(), s[0].seeds), ("CM", 2));
        let (_, mean, std) = &s[0].values[0];
        assert_eq!((*mean, *std), (2.0, 2f64.sqrt()));
        assert_eq!(s[1].values[3].2, 0.0);
        let md = markdown(&s);
        assert_eq!(md.lines().count(), 4);
        assert!(md.contains("| CM | 1 | 2.0000 ± 1.4142 |"), "{md}");
        assert_eq!(csv(&rows).lines().count(), 5);
    }
}
