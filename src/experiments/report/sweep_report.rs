//! A sweep's rows read as a report: means over its seeds per (setting, method, step
//! count), CM − Direct at each setting with its intervals once there are seeds to pair,
//! the Markdown table and the CSV.

use super::finding::{difference_cells, favours, num};
use crate::eval::difference::{mean, Difference};
use crate::eval::records::{Getter, SweepRow, COLUMNS};
use anyhow::Result;
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The seeds a sweep ran.
pub fn seeds(rows: &[SweepRow]) -> usize {
    rows.iter().map(|r| r.seed).collect::<BTreeSet<_>>().len()
}

/// `single seed, descriptive` or `3 seeds`.
pub fn seed_note(rows: &[SweepRow]) -> String {
    match seeds(rows) {
        1 => "single seed, descriptive".into(),
        n => format!("{n} seeds"),
    }
}

/// The settings swept, ascending.
pub fn settings(rows: &[SweepRow]) -> Vec<f64> {
    let mut s: Vec<f64> = Vec::new();
    for r in rows {
        if !s.contains(&r.setting) {
            s.push(r.setting);
        }
    }
    s.sort_by(f64::total_cmp);
    s
}

/// `get` at (setting, method, steps), in seed order.
pub fn per_seed_at(rows: &[SweepRow], setting: f64, method: &str, steps: usize, get: Getter) -> Vec<f64> {
    let mut r: Vec<&SweepRow> = rows
        .iter()
        .filter(|r| r.setting == setting && r.method == method && r.steps == steps)
        .collect();
    r.sort_by_key(|r| r.seed);
    r.iter().map(|r| get(&r.metrics)).collect()
}

/// The mean of `get` over seeds at (setting, method, steps); None where nothing ran.
pub fn mean_at(rows: &[SweepRow], setting: f64, method: &str, steps: usize, get: Getter) -> Option<f64> {
    let v = per_seed_at(rows, setting, method, steps, get);
    (!v.is_empty()).then(|| mean(&v))
}

/// `250`, `1`, `0.5`: a setting as the tables show it.
pub fn shown(setting: f64) -> String {
    if setting.fract() == 0.0 {
        format!("{setting:.0}")
    } else {
        num(setting)
    }
}

/// The metrics a sweep's differences are reported on.
pub const SWEPT: [(&str, Getter); 2] = [("FD vs teacher", COLUMNS[0].1), ("ODE error (latent)", COLUMNS[1].1)];

/// CM − Direct at every setting and step count where both ran, on FD vs teacher and ODE
/// error, paired by seed (none with fewer than 2 seeds: nothing to pair).
pub fn sweep_differences(rows: &[SweepRow], steps: &[usize], level: f64) -> Result<Vec<(f64, Difference)>> {
    let mut out = Vec::new();
    if seeds(rows) < 2 {
        return Ok(out);
    }
    for s in settings(rows) {
        for &k in steps {
            for (name, get) in SWEPT {
                let (cm, direct) = (
                    per_seed_at(rows, s, "CM", k, get),
                    per_seed_at(rows, s, "Direct", k, get),
                );
                if cm.len() >= 2 && cm.len() == direct.len() {
                    out.push((s, Difference::paired(k, name, &cm, &direct, level)?));
                }
            }
        }
    }
    Ok(out)
}

/// The (FD vs teacher, ODE error) table of a sweep, means over its seeds: one row per
/// (setting, method), one column pair per step count.
pub fn sweep_table(rows: &[SweepRow], setting: &str, steps: &[usize]) -> String {
    let mut s = format!("| {setting} | method |");
    for k in steps {
        let _ = write!(s, " FD vs teacher, {k} | ODE error, {k} |");
    }
    s.push_str(&format!("\n|---|---|{}\n", "---|---|".repeat(steps.len())));
    let mut keys: Vec<(f64, String)> = Vec::new();
    for r in rows {
        if !keys.iter().any(|k| k.0 == r.setting && k.1 == r.method) {
            keys.push((r.setting, r.method.clone()));
        }
    }
    keys.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (setting, method) in keys {
        let _ = write!(s, "| {} | {method} |", shown(setting));
        for &k in steps {
            let fd = mean_at(rows, setting, &method, k, SWEPT[0].1);
            let ode = mean_at(rows, setting, &method, k, SWEPT[1].1);
            let cell = |v: Option<f64>| v.map_or("–".to_string(), num);
            let _ = write!(s, " {} | {} |", cell(fd), cell(ode));
        }
        s.push('\n');
    }
    s
}

/// The table of a sweep's CM − Direct differences (empty without them).
pub fn sweep_difference_table(diffs: &[(f64, Difference)], setting: &str) -> String {
    if diffs.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\n| {setting} | steps | metric | CM | Direct | CM − Direct | bootstrap | t-interval | seeds with its sign | verdict |\n|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for (v, d) in diffs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            shown(*v),
            d.steps,
            d.metric,
            num(d.cm),
            num(d.direct),
            difference_cells(d),
            favours(d)
        );
    }
    s
}

pub fn sweep_csv(rows: &[SweepRow], setting: &str) -> String {
    let mut s = format!("{setting},method,steps,seed");
    for (name, _) in COLUMNS {
        let _ = write!(s, ",{}", name.replace(' ', "_").replace(['(', ')'], ""));
    }
    s.push('\n');
    for r in rows {
        let _ = write!(s, "{},{},{},{}", r.setting, r.method, r.steps, r.seed);
        for (_, get) in COLUMNS {
            let _ = write!(s, ",{}", get(&r.metrics));
        }
        s.push('\n');
    }
    s
}
