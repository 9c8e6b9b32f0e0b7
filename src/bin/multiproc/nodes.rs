//! The nodes of a SLURM allocation, as the multi-node runner ([`crate::cluster`]) needs them:
//! whether this is the batch script of a multi-node allocation, each node's name (the nodelist
//! expanded by `scontrol show hostnames`) and the job's CPUs on it (`SLURM_JOB_CPUS_PER_NODE`).

use std::process::{Command, Stdio};

use crate::Failure;

/// One node of the allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeAlloc {
    /// Its name (as in the nodelist and `SLURMD_NODENAME`).
    pub(crate) name: String,
    /// The job's CPUs on it.
    pub(crate) cpus: usize,
}

/// Expands `SLURM_JOB_CPUS_PER_NODE` (`2(x3),1`) into one count per node.
///
/// # Errors
/// A message naming the bad part.
pub(crate) fn parse_cpus_per_node(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let bad = || format!("SLURM_JOB_CPUS_PER_NODE={s}: cannot read {part:?}");
        let (count, times) = match part.split_once("(x") {
            Some((c, rest)) => {
                let t = rest.strip_suffix(')').ok_or_else(bad)?;
                (c, t.parse::<usize>().map_err(|_| bad())?)
            }
            None => (part, 1),
        };
        let count: usize = count.parse().map_err(|_| bad())?;
        if count == 0 || times == 0 {
            return Err(bad());
        }
        out.extend(std::iter::repeat_n(count, times));
    }
    Ok(out)
}

/// Expands a SLURM hostlist (`n[1-3],gpu7`) with `scontrol show hostnames`.
///
/// # Errors
/// `scontrol` cannot be run or rejects the list (`what` names where the list came from).
fn hostnames(list: &str, what: &str) -> Result<Vec<String>, Failure> {
    let out = Command::new("scontrol")
        .args(["show", "hostnames", list])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Failure::usage(format!("{what}: scontrol show hostnames {list}: {e}")))?;
    if !out.status.success() {
        return Err(Failure::usage(format!(
            "{what}: scontrol show hostnames {list}: {}",
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// The nodes to run on when this is the batch script of a multi-node allocation; `None` for a
/// one-node run (no SLURM, one node, inside a step, or `MULTIPROC_NODES=1`). `only` is
/// `--nodes LIST`: those nodes of the allocation (each must be in it); it needs a multi-node
/// allocation.
///
/// # Errors
/// The allocation's variables cannot be read, `scontrol` cannot expand a nodelist, or `--nodes`
/// names a node outside the allocation or is given outside a multi-node batch script.
pub(crate) fn allocation(only: Option<&str>) -> Result<Option<Vec<NodeAlloc>>, Failure> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let one_node = |why: &str| match only {
        Some(list) => Err(Failure::usage(format!(
            "--nodes {list}: not in the batch script of a multi-node SLURM allocation ({why})"
        ))),
        None => Ok(None),
    };
    if var("SLURM_STEP_ID").is_some() || var("SLURM_STEPID").is_some() {
        return one_node("inside a job step");
    }
    if var("MULTIPROC_NODES").as_deref() == Some("1") {
        return one_node("MULTIPROC_NODES=1");
    }
    let Some(n) = var("SLURM_JOB_NUM_NODES").or_else(|| var("SLURM_NNODES")) else {
        return one_node("no SLURM_JOB_NUM_NODES");
    };
    let n: usize = n
        .parse()
        .map_err(|_| Failure::usage(format!("SLURM_JOB_NUM_NODES={n} is not a number of nodes")))?;
    if n <= 1 {
        return one_node("SLURM_JOB_NUM_NODES=1");
    }
    let list = var("SLURM_JOB_NODELIST")
        .or_else(|| var("SLURM_NODELIST"))
        .ok_or_else(|| Failure::usage("SLURM_JOB_NUM_NODES > 1 but no SLURM_JOB_NODELIST"))?;
    let names = hostnames(&list, "SLURM_JOB_NODELIST")?;
    let cpus_var = var("SLURM_JOB_CPUS_PER_NODE")
        .ok_or_else(|| Failure::usage("SLURM_JOB_NUM_NODES > 1 but no SLURM_JOB_CPUS_PER_NODE"))?;
    let cpus = parse_cpus_per_node(&cpus_var).map_err(Failure::usage)?;
    if names.len() != n || cpus.len() != n {
        return Err(Failure::usage(format!(
            "SLURM_JOB_NUM_NODES={n}, but SLURM_JOB_NODELIST={list} has {} nodes and \
             SLURM_JOB_CPUS_PER_NODE={cpus_var} {} counts",
            names.len(),
            cpus.len()
        )));
    }
    let mut nodes: Vec<NodeAlloc> = names
        .into_iter()
        .zip(cpus)
        .map(|(name, cpus)| NodeAlloc { name, cpus })
        .collect();
    if let Some(only) = only {
        let wanted = hostnames(only, "--nodes")?;
        if let Some(out) = wanted.iter().find(|w| !nodes.iter().any(|n| &n.name == *w)) {
            return Err(Failure::usage(format!(
                "--nodes {only}: node {out} is not in this job's allocation ({list})"
            )));
        }
        nodes.retain(|n| wanted.contains(&n.name));
    }
    Ok(Some(nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_per_node_expands() {
        assert_eq!(parse_cpus_per_node("1(x2)").unwrap(), [1, 1]);
        assert_eq!(parse_cpus_per_node("4,2(x3),1").unwrap(), [4, 2, 2, 2, 1]);
        for bad in ["", "x", "2(x", "2(x0)", "0", "2(3)"] {
            let e = parse_cpus_per_node(bad).unwrap_err();
            assert!(e.contains("SLURM_JOB_CPUS_PER_NODE"), "{bad}: {e}");
        }
    }
}
