//! How KD vs data behaves on the teacher's own DDIM samples, shown before any KD-based
//! finding: a metric of sample quality should improve as the teacher's own solve gets
//! finer (closer to its N-step reference). Where it does not, KD differences between
//! students are not read as differences in quality.

use super::finding::num;
use crate::eval::difference::{mean, per_seed, Difference};
use crate::eval::records::{Getter, Row};
use std::fmt::Write as _;

const SHOWN: [(&str, Getter); 3] = [
    ("FD vs teacher", |m| m.fd_teacher),
    ("FD vs data", |m| m.fd_data),
    ("KD vs data", |m| m.kd_data),
];

/// Means over seeds of the teacher's DDIM at each step count, and of its N-step
/// reference when the run recorded it.
fn teacher_means(rows: &[Row], steps: &[usize], get: Getter) -> (Vec<f64>, Option<(usize, f64)>) {
    let ddim = steps
        .iter()
        .map(|&k| mean(&per_seed(rows, "teacher DDIM", k, get)))
        .collect();
    let reference = rows
        .iter()
        .find(|r| r.method == "teacher")
        .map(|r| (r.steps, mean(&per_seed(rows, "teacher", r.steps, get))));
    (ddim, reference)
}

/// The teacher's own solves' table and the sentence on KD's behaviour along them.
pub fn teacher_section(rows: &[Row], steps: &[usize]) -> String {
    if !rows.iter().any(|r| r.method == "teacher DDIM") {
        return String::new();
    }
    let mut s = String::from("| teacher's own solve |");
    for (name, _) in SHOWN {
        let _ = write!(s, " {name} |");
    }
    s.push_str("\n|---|---|---|---|\n");
    let columns: Vec<_> = SHOWN.iter().map(|(_, get)| teacher_means(rows, steps, *get)).collect();
    for (i, k) in steps.iter().enumerate() {
        let cells: Vec<String> = columns.iter().map(|c| num(c.0[i])).collect();
        let _ = writeln!(
            s,
            "| DDIM, {k} interval{} | {} |",
            if *k == 1 { "" } else { "s" },
            cells.join(" | ")
        );
    }
    if let Some((n, _)) = columns[0].1 {
        let cells: Vec<String> = columns.iter().map(|c| c.1.map_or("–".into(), |v| num(v.1))).collect();
        let _ = writeln!(s, "| reference, {n} intervals | {} |", cells.join(" | "));
    }
    let _ = writeln!(s, "\n{}", kd_path_sentence(steps, &columns[0].0, &columns[2].0));
    s
}

/// The sentence on KD along the teacher's own DDIM (None before the teacher was judged).
pub fn kd_sentence(rows: &[Row], steps: &[usize]) -> Option<String> {
    if !rows.iter().any(|r| r.method == "teacher DDIM") {
        return None;
    }
    let fd = teacher_means(rows, steps, SHOWN[0].1).0;
    let kd = teacher_means(rows, steps, SHOWN[2].1).0;
    Some(kd_path_sentence(steps, &fd, &kd))
}

/// `476 → 207 → 75.4`
fn path(v: &[f64]) -> String {
    v.iter().map(|&x| num(x)).collect::<Vec<_>>().join(" → ")
}

/// FD vs teacher and KD vs data along the teacher's DDIM, and where KD gets worse.
fn kd_path_sentence(steps: &[usize], fd: &[f64], kd: &[f64]) -> String {
    let ks: Vec<String> = steps.iter().map(|k| k.to_string()).collect();
    let mut s = format!(
        "On the teacher's own DDIM samples, as the solve gets finer ({} intervals), FD vs teacher goes {} and KD vs data {}.",
        ks.join(", "),
        path(fd),
        path(kd)
    );
    let rises: Vec<String> = (1..kd.len())
        .filter(|&i| kd[i] > kd[i - 1])
        .map(|i| {
            format!(
                "from {} to {} intervals ({} → {})",
                steps[i - 1],
                steps[i],
                num(kd[i - 1]),
                num(kd[i])
            )
        })
        .collect();
    if rises.is_empty() {
        s.push_str(" KD falls as the solve gets finer, as a measure of quality should.");
    } else {
        let _ = write!(
            s,
            " KD gets worse {}: on these features it does not rank even the teacher's own solves by their accuracy, so a KD difference between students is reported below but not read as a difference in sample quality.",
            rises.join(" and ")
        );
    }
    s
}

/// The step counts where the means of KD vs data and FD vs data favour different methods.
pub fn kd_against_fd(diffs: &[Difference]) -> Vec<usize> {
    let find = |m: &str, k: usize| diffs.iter().find(|d| d.metric == m && d.steps == k);
    let mut steps: Vec<usize> = diffs.iter().map(|d| d.steps).collect();
    steps.dedup();
    steps
        .into_iter()
        .filter(|&k| match (find("KD vs data", k), find("FD vs data", k)) {
            (Some(kd), Some(fd)) => kd.interval.estimate * fd.interval.estimate < 0.0,
            _ => false,
        })
        .collect()
}
