//! How many CPUs this process may use: [`cpu_count`] and [`cpu_budget`], and how a job farm
//! fills them ([`CpuBudget::job_farm`]).
//!
//! # The rule (SLURM)
//!
//! - **Inside a job step's task** (`SLURM_STEP_ID` set, and not `batch` or `extern`: a process
//!   started by `srun`): the task's share, `SLURM_CPUS_PER_TASK`; without it (no `-c`),
//!   `SLURM_CPUS_ON_NODE` / `SLURM_STEP_TASKS_PER_NODE` for this node.
//! - **In the batch script itself** (or an `salloc` shell: `SLURM_JOB_ID` set, no step): the
//!   job's CPUs on this node, `SLURM_CPUS_ON_NODE`; else this node's entry of
//!   `SLURM_JOB_CPUS_PER_NODE`; else this node's entry of `SLURM_TASKS_PER_NODE` ×
//!   `SLURM_CPUS_PER_TASK` (1 when unset). "This node" is entry `SLURM_NODEID` (0 when unset) of
//!   the compressed lists (`72(x2),36`: nodes 0 and 1 have 72, node 2 has 36).
//! - **Outside SLURM**: the CPUs this process may run on.
//!
//! A SLURM figure is always capped by the CPUs this process may actually use (its affinity mask
//! and cgroup CPU quota, as [`std::thread::available_parallelism`] reads them). In a batch script
//! the budget also records `SLURM_TASKS_PER_NODE` and `SLURM_CPUS_PER_TASK`, so that a job farm
//! runs one job per task, each with the task's CPUs ([`CpuBudget::job_farm`]).
//!
//! | allocation (one node of 16 CPUs) | in the batch script | in `srun`'s task |
//! |---|---|---|
//! | `-n 4` | 4 CPUs (`SLURM_CPUS_ON_NODE`): 4 jobs × 1 thread | 1 CPU |
//! | `-n 4 -c 2` | 8 CPUs: 4 jobs × 2 threads | 2 CPUs (`SLURM_CPUS_PER_TASK`) |
//! | `-c 8` | 8 CPUs: 1 job × 8 threads | 8 CPUs |
//! | `-N 2 -n 8` | 4 CPUs on this node: 4 jobs × 1 thread | 1 CPU |
//! | `--exclusive` | 16 CPUs: 16 jobs × 1 thread (`SLURM_TASKS_PER_NODE=16`) | the step's share |

use std::fmt;

use crate::error::{Error, Result};

/// Where a CPU count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuSource {
    /// `SLURM_CPUS_PER_TASK`, inside a job step's task (`srun -c N`).
    SlurmCpusPerTask,
    /// `SLURM_CPUS_ON_NODE` / `SLURM_STEP_TASKS_PER_NODE`, inside a job step's task without
    /// `SLURM_CPUS_PER_TASK`.
    SlurmStepShare,
    /// `SLURM_CPUS_ON_NODE`, in the batch script (or an `salloc` shell).
    SlurmCpusOnNode,
    /// This node's entry of `SLURM_JOB_CPUS_PER_NODE`, in the batch script.
    SlurmJobCpusPerNode,
    /// This node's entry of `SLURM_TASKS_PER_NODE` × `SLURM_CPUS_PER_TASK`, in the batch script.
    SlurmTasksPerNode,
    /// The CPUs this process may run on: its affinity mask and cgroup quota.
    Usable,
}

impl CpuSource {
    /// The environment variables the count came from, or `"affinity mask and cgroup quota"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuSource::SlurmCpusPerTask => "SLURM_CPUS_PER_TASK",
            CpuSource::SlurmStepShare => "SLURM_CPUS_ON_NODE / SLURM_STEP_TASKS_PER_NODE",
            CpuSource::SlurmCpusOnNode => "SLURM_CPUS_ON_NODE",
            CpuSource::SlurmJobCpusPerNode => "SLURM_JOB_CPUS_PER_NODE",
            CpuSource::SlurmTasksPerNode => "SLURM_TASKS_PER_NODE x SLURM_CPUS_PER_TASK",
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
#[non_exhaustive]
pub struct CpuBudget {
    /// How many CPUs to use (at least 1).
    pub count: usize,
    /// Where the number came from.
    pub source: CpuSource,
    /// The SLURM figure when it was larger than the usable CPUs and so was capped.
    pub capped_from: Option<usize>,
    /// In a batch script: this node's entry of `SLURM_TASKS_PER_NODE` (the tasks the job asked
    /// for on this node). `None` elsewhere.
    pub tasks_on_node: Option<usize>,
    /// In a batch script: `SLURM_CPUS_PER_TASK` (each task's CPUs). `None` elsewhere.
    pub cpus_per_task: Option<usize>,
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

impl CpuBudget {
    /// How a job farm fills the budget: `(jobs at once, threads per job, why)`.
    ///
    /// In a batch script with `SLURM_TASKS_PER_NODE` (see [`CpuBudget::tasks_on_node`]): one job
    /// per task on this node, each with `SLURM_CPUS_PER_TASK` threads (1 when unset), the jobs
    /// capped so that jobs × threads fits the budget. Elsewhere: one single-threaded job per
    /// CPU. `why` names the variables used, e.g.
    /// `"SLURM_TASKS_PER_NODE=4, SLURM_CPUS_PER_TASK=2"`.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::cpu_budget_with;
    ///
    /// // sbatch --ntasks=2 --cpus-per-task=1, in the batch script:
    /// let vars = [("SLURM_JOB_ID", "7"), ("SLURM_CPUS_ON_NODE", "2"),
    ///             ("SLURM_TASKS_PER_NODE", "2"), ("SLURM_CPUS_PER_TASK", "1")];
    /// let env = |v: &str| vars.iter().find(|(k, _)| *k == v).map(|(_, x)| x.to_string());
    /// let budget = cpu_budget_with(env, 2)?;
    /// assert_eq!(budget.to_string(), "2 CPUs (SLURM_CPUS_ON_NODE)");
    /// let (jobs, threads, _) = budget.job_farm();
    /// assert_eq!((jobs, threads), (2, 1));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn job_farm(&self) -> (usize, usize, String) {
        let threads = self.cpus_per_task.unwrap_or(1).clamp(1, self.count.max(1));
        let fit = (self.count / threads).max(1);
        let (jobs, mut why) = match (self.tasks_on_node, self.cpus_per_task) {
            (None, None) => return (self.count, 1, self.to_string()),
            (Some(tasks), cpt) => {
                let mut why = format!("{self}; SLURM_TASKS_PER_NODE={tasks}");
                if let Some(c) = cpt {
                    why.push_str(&format!(", SLURM_CPUS_PER_TASK={c}"));
                }
                (tasks, why)
            }
            (None, Some(c)) => (fit, format!("{self} / SLURM_CPUS_PER_TASK={c}")),
        };
        if jobs > fit {
            why.push_str(&format!("; capped to {fit} job(s) by the budget"));
        }
        (jobs.min(fit).max(1), threads, why)
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

/// The number of CPUs this process should use, and where it came from: the rule of the
/// [module docs](self) (a job step's task: `SLURM_CPUS_PER_TASK`; the batch script: the job's
/// CPUs on this node; outside SLURM: the usable CPUs), always capped by the CPUs this process
/// may actually use (affinity mask and cgroup quota), never the node's raw core count. The
/// result is at least 1.
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
/// // Inside `srun -c 8`'s task, on a process pinned to 4 CPUs:
/// let vars = [("SLURM_JOB_ID", "7"), ("SLURM_STEP_ID", "0"), ("SLURM_CPUS_PER_TASK", "8")];
/// let env = |v: &str| vars.iter().find(|(k, _)| *k == v).map(|(_, x)| x.to_string());
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
    let node = match lookup("SLURM_NODEID") {
        Some(v) => parse_index("SLURM_NODEID", &v)?,
        None => 0,
    };
    let entry = |var: &str| -> Result<Option<usize>> {
        lookup(var).map(|v| node_entry(var, &v, node)).transpose()
    };
    let cpus_per_task = read("SLURM_CPUS_PER_TASK")?;
    let step = lookup("SLURM_STEP_ID").or_else(|| lookup("SLURM_STEPID"));
    let in_step = step.is_some_and(|s| s != "batch" && s != "extern");
    let in_job = lookup("SLURM_JOB_ID").is_some() || lookup("SLURM_JOBID").is_some();
    let mut tasks_on_node = None;
    let mut batch_cpt = None;
    let slurm = if in_step {
        match cpus_per_task {
            Some(n) => Some((n, CpuSource::SlurmCpusPerTask)),
            None => match (
                read("SLURM_CPUS_ON_NODE")?,
                entry("SLURM_STEP_TASKS_PER_NODE")?,
            ) {
                (Some(cpus), Some(tasks)) => {
                    Some(((cpus / tasks).max(1), CpuSource::SlurmStepShare))
                }
                _ => None,
            },
        }
    } else if in_job || cpus_per_task.is_some() || lookup("SLURM_CPUS_ON_NODE").is_some() {
        tasks_on_node = entry("SLURM_TASKS_PER_NODE")?;
        batch_cpt = cpus_per_task;
        if let Some(n) = read("SLURM_CPUS_ON_NODE")? {
            Some((n, CpuSource::SlurmCpusOnNode))
        } else if let Some(n) = entry("SLURM_JOB_CPUS_PER_NODE")? {
            Some((n, CpuSource::SlurmJobCpusPerNode))
        } else if let Some(tasks) = tasks_on_node {
            Some((
                tasks * cpus_per_task.unwrap_or(1),
                CpuSource::SlurmTasksPerNode,
            ))
        } else {
            cpus_per_task.map(|n| (n, CpuSource::SlurmCpusPerTask))
        }
    } else {
        None
    };
    let (count, source, capped_from) = match slurm {
        Some((n, source)) if n > usable => (usable, source, Some(n)),
        Some((n, source)) => (n, source, None),
        None => (usable, CpuSource::Usable, None),
    };
    Ok(CpuBudget {
        count,
        source,
        capped_from,
        tasks_on_node,
        cpus_per_task: batch_cpt,
    })
}

fn invalid(var: &str, value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidEnv {
        var: var.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A whole number from 0 up, digits only (`SLURM_NODEID`).
fn parse_index(var: &str, value: &str) -> Result<usize> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            var,
            value,
            "expected a whole number from 0 up (digits only)",
        ));
    }
    value.parse().map_err(|_| {
        invalid(
            var,
            value,
            format!("the number is larger than the limit {}", usize::MAX),
        )
    })
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
    let n = parse_index(var, value).map_err(|_| {
        invalid(
            var,
            value,
            "expected a whole number from 1 up (digits only)",
        )
    })?;
    if n == 0 {
        return Err(invalid(var, value, "it must be at least 1"));
    }
    Ok(n)
}

/// Entry `node` (0-based) of a SLURM per-node list (`72(x2),36`: nodes 0 and 1 → 72, node 2 →
/// 36), after checking the whole value's form. A node past the list's end is an error.
fn node_entry(var: &str, value: &str, node: usize) -> Result<usize> {
    let bad = |entry: &str| {
        invalid(
            var,
            value,
            format!("entry {entry:?} is not of the form N or N(xM)"),
        )
    };
    let mut seen = 0usize;
    let mut found = None;
    for entry in value.split(',') {
        let (count, repeat) = match entry.split_once("(x") {
            Some((count, rest)) => (
                count,
                Some(rest.strip_suffix(')').ok_or_else(|| bad(entry))?),
            ),
            None => (entry, None),
        };
        let n = parse_count(var, count).map_err(|_| bad(entry))?;
        let reps = match repeat {
            Some(r) => parse_count(var, r).map_err(|_| bad(entry))?,
            None => 1,
        };
        if found.is_none() && node < seen.saturating_add(reps) {
            found = Some(n);
        }
        seen = seen.saturating_add(reps);
    }
    found.ok_or_else(|| {
        invalid(
            var,
            value,
            format!("it lists {seen} node(s); this is node {node} (SLURM_NODEID)"),
        )
    })
}
