//! How many CPUs this process may use: [`cpu_count`] and [`cpu_budget`].

use std::fmt;

use crate::error::{Error, Result};

/// Where a CPU count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuSource {
    /// `SLURM_CPUS_PER_TASK` (set when the job asked for `--cpus-per-task`).
    SlurmCpusPerTask,
    /// `SLURM_CPUS_ON_NODE`, in a one-node job.
    SlurmCpusOnNode,
    /// The first entry of `SLURM_JOB_CPUS_PER_NODE`, in a one-node job.
    SlurmJobCpusPerNode,
    /// The CPUs this process may run on: its affinity mask and cgroup CPU quota.
    Usable,
}

impl CpuSource {
    /// The environment variable, or `"affinity mask and cgroup quota"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuSource::SlurmCpusPerTask => "SLURM_CPUS_PER_TASK",
            CpuSource::SlurmCpusOnNode => "SLURM_CPUS_ON_NODE",
            CpuSource::SlurmJobCpusPerNode => "SLURM_JOB_CPUS_PER_NODE",
            CpuSource::Usable => "affinity mask and cgroup quota",
        }
    }
}

impl fmt::Display for CpuSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CPU count and where it came from, for job logs: `"4 CPUs (SLURM_CPUS_PER_TASK)"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBudget {
    /// How many CPUs to use (at least 1).
    pub count: usize,
    /// Where the number came from.
    pub source: CpuSource,
    /// The SLURM figure when it was larger than the usable CPUs and so was capped.
    pub capped_from: Option<usize>,
}

impl fmt::Display for CpuBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.count == 1 { "CPU" } else { "CPUs" };
        match self.capped_from {
            Some(asked) => write!(
                f,
                "{} {unit} ({}={asked}, capped by the affinity mask and cgroup quota)",
                self.count, self.source
            ),
            None => write!(f, "{} {unit} ({})", self.count, self.source),
        }
    }
}

/// The number of CPUs this process should use; see [`cpu_budget`] for the rules.
///
/// # Examples
///
/// ```
/// let n = multiproc::cpu_count()?;
/// assert!(n >= 1);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidEnv`] when a SLURM variable it reads is malformed.
pub fn cpu_count() -> Result<usize> {
    cpu_budget().map(|b| b.count)
}

/// The number of CPUs this process should use, and where it came from.
///
/// Precedence:
/// 1. `SLURM_CPUS_PER_TASK`, when set;
/// 2. otherwise, in a one-node job (`SLURM_JOB_NUM_NODES` unset or `1`), `SLURM_CPUS_ON_NODE`,
///    then the first entry of `SLURM_JOB_CPUS_PER_NODE` (`72(x2),36` gives 72);
/// 3. otherwise the CPUs this process may actually use.
///
/// A SLURM figure is capped by the CPUs this process may actually use (its affinity mask and
/// its cgroup CPU quota, as [`std::thread::available_parallelism`] reads them), never the node's
/// raw core count. The result is at least 1.
///
/// # Examples
///
/// ```
/// let budget = multiproc::cpu_budget()?;
/// println!("pool of {budget}"); // e.g. "pool of 4 CPUs (SLURM_CPUS_PER_TASK)"
/// assert!(budget.count >= 1);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidEnv`], naming the variable and its value, when one of the variables it reads
/// is not a whole number from 1 up (`abc`, `0`, `-2`, the empty string, `4.5`, or a number too
/// large for a `usize` are all refused: none is silently replaced by a default).
pub fn cpu_budget() -> Result<CpuBudget> {
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpu_budget_with(|var| std::env::var(var).ok(), usable)
}

/// [`cpu_budget`] with the environment and the usable CPU count given: `lookup` returns a
/// variable's value; `usable` is the number of CPUs the process may run on.
///
/// # Examples
///
/// ```
/// use multiproc::{CpuSource, cpu_budget_with};
///
/// let env = |var: &str| (var == "SLURM_CPUS_PER_TASK").then(|| "8".to_string());
/// let budget = cpu_budget_with(env, 4)?;
/// assert_eq!((budget.count, budget.source), (4, CpuSource::SlurmCpusPerTask));
/// assert_eq!(budget.capped_from, Some(8));
///
/// let bad = |var: &str| (var == "SLURM_CPUS_PER_TASK").then(|| "4.5".to_string());
/// assert!(cpu_budget_with(bad, 4).unwrap_err().to_string().contains("SLURM_CPUS_PER_TASK"));
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Errors
///
/// As [`cpu_budget`].
pub fn cpu_budget_with(
    lookup: impl Fn(&str) -> Option<String>,
    usable: usize,
) -> Result<CpuBudget> {
    let usable = usable.max(1);
    let read = |var: &str| -> Result<Option<usize>> {
        lookup(var).map(|v| parse_count(var, &v)).transpose()
    };
    let slurm = if let Some(n) = read("SLURM_CPUS_PER_TASK")? {
        Some((n, CpuSource::SlurmCpusPerTask))
    } else {
        let nodes = match read("SLURM_JOB_NUM_NODES")? {
            Some(n) => Some(n),
            None => read("SLURM_NNODES")?,
        };
        if nodes.is_none_or(|n| n == 1) {
            if let Some(n) = read("SLURM_CPUS_ON_NODE")? {
                Some((n, CpuSource::SlurmCpusOnNode))
            } else if let Some(v) = lookup("SLURM_JOB_CPUS_PER_NODE") {
                Some((first_cpus_per_node(&v)?, CpuSource::SlurmJobCpusPerNode))
            } else {
                None
            }
        } else {
            None
        }
    };
    Ok(match slurm {
        Some((n, source)) if n > usable => CpuBudget {
            count: usable,
            source,
            capped_from: Some(n),
        },
        Some((n, source)) => CpuBudget {
            count: n,
            source,
            capped_from: None,
        },
        None => CpuBudget {
            count: usable,
            source: CpuSource::Usable,
            capped_from: None,
        },
    })
}

fn invalid(var: &str, value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidEnv {
        var: var.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A whole number from 1 up, digits only.
fn parse_count(var: &str, value: &str) -> Result<usize> {
    if value.is_empty() {
        return Err(invalid(
            var,
            value,
            "it is empty; expected a whole number from 1 up",
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            var,
            value,
            "expected a whole number from 1 up (digits only)",
        ));
    }
    let n: usize = value.parse().map_err(|_| {
        invalid(
            var,
            value,
            format!("the number is larger than the limit {}", usize::MAX),
        )
    })?;
    if n == 0 {
        return Err(invalid(var, value, "it must be at least 1"));
    }
    Ok(n)
}

/// The first entry of `SLURM_JOB_CPUS_PER_NODE` (`72(x2),36` → 72), after checking the whole
/// value's form.
fn first_cpus_per_node(value: &str) -> Result<usize> {
    const VAR: &str = "SLURM_JOB_CPUS_PER_NODE";
    let mut first = None;
    for entry in value.split(',') {
        let (count, repeat) = match entry.split_once("(x") {
            Some((count, rest)) => {
                let reps = rest.strip_suffix(')').ok_or_else(|| {
                    invalid(
                        VAR,
                        value,
                        format!("entry {entry:?} is not of the form N or N(xM)"),
                    )
                })?;
                (count, Some(reps))
            }
            None => (entry, None),
        };
        let n = parse_count(VAR, count).map_err(|_| {
            invalid(
                VAR,
                value,
                format!("entry {entry:?} is not of the form N or N(xM)"),
            )
        })?;
        if let Some(reps) = repeat {
            parse_count(VAR, reps).map_err(|_| {
                invalid(
                    VAR,
                    value,
                    format!("entry {entry:?} is not of the form N or N(xM)"),
                )
            })?;
        }
        first.get_or_insert(n);
    }
    first.ok_or_else(|| invalid(VAR, value, "it is empty"))
}
