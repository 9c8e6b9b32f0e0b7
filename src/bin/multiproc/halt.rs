//! `--halt`: when a run stops early, as GNU parallel spells it.

use std::num::NonZeroU64;

/// When `--halt` acts: after the running jobs end (`soon`) or at once, killing them (`now`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HaltWhen {
    /// Start no new jobs; wait for the running ones.
    Soon,
    /// Kill the running jobs.
    Now,
}

/// Which finished jobs `--halt` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HaltOn {
    /// Failed jobs.
    Fail,
    /// Succeeded jobs.
    Success,
    /// All finished jobs.
    Done,
}

/// How many counted jobs trigger `--halt`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Threshold {
    /// This many jobs.
    Count(NonZeroU64),
    /// This percentage of all jobs, in (0, 100].
    Percent(f64),
}

/// A parsed `--halt` spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Halt {
    /// Never stop early (the default).
    Never,
    /// Stop when the threshold is reached.
    When {
        /// Soon or now.
        when: HaltWhen,
        /// What is counted.
        on: HaltOn,
        /// How many.
        threshold: Threshold,
    },
}

impl Halt {
    /// Parses `never`, `soon|now,fail|success|done=N|P%`, or GNU parallel's legacy `0`, `1`, `2`
    /// (never; soon,fail=1; now,fail=1). `None` if the spec is malformed.
    pub(crate) fn parse(spec: &str) -> Option<Halt> {
        let one = NonZeroU64::MIN;
        match spec {
            "never" | "0" => return Some(Halt::Never),
            "1" => return Some(halt(HaltWhen::Soon, HaltOn::Fail, Threshold::Count(one))),
            "2" => return Some(halt(HaltWhen::Now, HaltOn::Fail, Threshold::Count(one))),
            _ => {}
        }
        let (when, cond) = spec.split_once(',')?;
        let when = match when {
            "soon" => HaltWhen::Soon,
            "now" => HaltWhen::Now,
            _ => return None,
        };
        let (on, value) = cond.split_once('=')?;
        let on = match on {
            "fail" => HaltOn::Fail,
            "success" => HaltOn::Success,
            "done" => HaltOn::Done,
            _ => return None,
        };
        let threshold = match value.strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.parse().ok()?;
                // `p > 0.0` is false for NaN too.
                if !(p > 0.0 && p <= 100.0) {
                    return None;
                }
                Threshold::Percent(p)
            }
            None => Threshold::Count(value.parse().ok()?),
        };
        Some(halt(when, on, threshold))
    }
}

pub(crate) fn halt(when: HaltWhen, on: HaltOn, threshold: Threshold) -> Halt {
    Halt::When {
        when,
        on,
        threshold,
    }
}
