//! Finding sentences generated from paired intervals of CM − Direct: which metric,
//! which method it favours, and whether the interval excludes 0. Nothing here is
//! worded by hand about a particular result.

use crate::eval::bootstrap::Interval;

/// Whether a smaller value of a metric is better (FD, KD, ODE error) or a larger one
/// (precision, recall, density, coverage, class accuracy).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Better {
    Lower,
    Higher,
}

/// Which method an interval of CM − Direct favours.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Cm,
    Direct,
    Unresolved,
}

pub fn verdict(ci: &Interval, better: Better) -> Verdict {
    if !ci.excludes_zero() {
        return Verdict::Unresolved;
    }
    match (ci.estimate < 0.0, better) {
        (true, Better::Lower) | (false, Better::Higher) => Verdict::Cm,
        _ => Verdict::Direct,
    }
}

/// Three significant digits, in scientific notation outside [0.01, 10⁴).
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(0.01..1e4).contains(&a) {
        format!("{v:.2e}")
    } else {
        let decimals = if a == 0.0 {
            0
        } else {
            (2 - a.log10().floor() as i32).max(0) as usize
        };
        format!("{v:.decimals$}")
    }
}

/// `+1.23 [0.50, 2.01]`
pub fn interval_text(ci: &Interval) -> String {
    format!(
        "{}{} [{}, {}]",
        if ci.estimate >= 0.0 { "+" } else { "" },
        num(ci.estimate),
        num(ci.low),
        num(ci.high)
    )
}

/// One sentence on one metric at one step count.
pub fn sentence(metric: &str, steps: usize, better: Better, ci: &Interval) -> String {
    let at = format!("At {steps} step{}", if steps == 1 { "" } else { "s" });
    let diff = interval_text(ci);
    match verdict(ci, better) {
        Verdict::Unresolved => {
            format!("{at}, {metric} does not separate the methods: CM − Direct = {diff}, an interval that includes 0.")
        }
        v => {
            let (winner, loser) = if v == Verdict::Cm {
                ("CM", "Direct")
            } else {
                ("Direct", "CM")
            };
            let side = if better == Better::Lower { "lower" } else { "higher" };
            format!("{at}, {winner} has the {side} (better) {metric} than {loser}: CM − Direct = {diff}, excluding 0.")
        }
    }
}

/// The paper's claim at one step count — Direct solves the ODE better (lower ODE error)
/// yet its samples are worse (higher FD against `reference`, the teacher's samples) —
/// judged from the two intervals.
pub fn claim(steps: usize, ode_error: &Interval, fd_teacher: &Interval, reference: &str) -> String {
    let ode = verdict(ode_error, Better::Lower);
    let fd = verdict(fd_teacher, Better::Lower);
    let at = format!("at {steps} step{}", if steps == 1 { "" } else { "s" });
    let ode_part = match ode {
        Verdict::Direct => "Direct has the lower ODE error (as the paper)",
        Verdict::Cm => "CM has the lower ODE error (the paper's is Direct)",
        Verdict::Unresolved => "the ODE errors do not separate",
    };
    let fd_part = match fd {
        Verdict::Cm => format!("CM has the lower FD against {reference} (as the paper)"),
        Verdict::Direct => format!("Direct has the lower FD against {reference} (the paper's is CM)"),
        Verdict::Unresolved => format!("the FDs against {reference} do not separate"),
    };
    let status = match (ode, fd) {
        (Verdict::Direct, Verdict::Cm) => "holds",
        (Verdict::Unresolved, _) | (_, Verdict::Unresolved) => "is not resolved",
        _ => "does not hold",
    };
    format!("The paper's claim {status} {at}: {ode_part}; {fd_part}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ci(estimate: f64, low: f64, high: f64) -> Interval {
        Interval { estimate, low, high }
    }

    #[test]
    fn the_direction_follows_the_sign_and_the_metric() {
        assert_eq!(verdict(&ci(-3.0, -5.0, -1.0), Better::Lower), Verdict::Cm);
        assert_eq!(verdict(&ci(-3.0, -5.0, -1.0), Better::Higher), Verdict::Direct);
        assert_eq!(verdict(&ci(0.2, 0.1, 0.3), Better::Higher), Verdict::Cm);
        assert_eq!(verdict(&ci(0.2, -0.1, 0.3), Better::Higher), Verdict::Unresolved);
    }

    #[test]
    fn sentences_name_metric_direction_and_interval() {
        let s = sentence("FD vs teacher", 2, Better::Lower, &ci(120.0, 80.5, 151.0));
        assert_eq!(
            s,
            "At 2 steps, Direct has the lower (better) FD vs teacher than CM: CM − Direct = +120 [80.5, 151], excluding 0."
        );
        let s = sentence("recall", 1, Better::Higher, &ci(0.05, -0.01, 0.1));
        assert_eq!(
            s,
            "At 1 step, recall does not separate the methods: CM − Direct = +0.0500 [-0.0100, 0.100], an interval that includes 0."
        );
    }

    #[test]
    fn the_claim_needs_both_intervals_on_the_papers_side() {
        let direct_lower_ode = ci(0.1, 0.05, 0.2);
        let cm_lower_fd = ci(-10.0, -20.0, -5.0);
        assert_eq!(
            claim(1, &direct_lower_ode, &cm_lower_fd, "the teacher"),
            "The paper's claim holds at 1 step: Direct has the lower ODE error (as the paper); \
             CM has the lower FD against the teacher (as the paper)."
        );
        let direct_lower_fd = ci(10.0, 5.0, 20.0);
        assert!(claim(4, &direct_lower_ode, &direct_lower_fd, "x")
            .starts_with("The paper's claim does not hold at 4 steps"));
        let unresolved = ci(1.0, -1.0, 3.0);
        let s = claim(2, &direct_lower_ode, &unresolved, "the exact samples");
        assert!(
            s.starts_with("The paper's claim is not resolved")
                && s.contains("the FDs against the exact samples do not")
        );
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(num(376.9126), "377");
        assert_eq!(num(0.53972), "0.540");
        assert_eq!(num(-46.318), "-46.3");
        assert_eq!(num(6.858e-3), "6.86e-3");
        assert_eq!(num(0.0), "0");
    }
}
