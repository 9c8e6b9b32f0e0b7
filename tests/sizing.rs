//! CPU sizing: real SLURM environments (batch script and step), capping, the job farm split,
//! and every malformed value.

use multiproc::{CpuSource, Error, cpu_budget_with};

fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// One real SLURM environment (variables as Slurm 22.05 sets them; the 2-CPU rows were captured
/// on scripts/slurm's one-node cluster, the 16-CPU rows follow the same pattern).
struct Case {
    what: &'static str,
    vars: &'static [(&'static str, &'static str)],
    /// CPUs the process may run on (its affinity mask).
    usable: usize,
    /// `(count, source)` of the budget.
    budget: (usize, CpuSource),
    /// `(jobs, threads)` of the job farm.
    farm: (usize, usize),
}

const BATCH_N4: &[(&str, &str)] = &[
    ("SLURM_JOB_ID", "11"),
    ("SLURM_CPUS_ON_NODE", "4"),
    ("SLURM_JOB_CPUS_PER_NODE", "4"),
    ("SLURM_JOB_NUM_NODES", "1"),
    ("SLURM_NNODES", "1"),
    ("SLURM_NODEID", "0"),
    ("SLURM_NTASKS", "4"),
    ("SLURM_TASKS_PER_NODE", "4"),
];

fn cases() -> Vec<Case> {
    use CpuSource::*;
    vec![
        Case {
            what: "sbatch -n 4: batch script",
            vars: BATCH_N4,
            usable: 4,
            budget: (4, SlurmCpusOnNode),
            farm: (4, 1),
        },
        Case {
            what: "sbatch -n 4: srun's task",
            vars: &[
                ("SLURM_JOB_ID", "11"),
                ("SLURM_STEP_ID", "0"),
                ("SLURM_CPUS_ON_NODE", "4"),
                ("SLURM_STEP_TASKS_PER_NODE", "4"),
                ("SLURM_TASKS_PER_NODE", "4"),
                ("SLURM_NODEID", "0"),
            ],
            usable: 1,
            budget: (1, SlurmStepShare),
            farm: (1, 1),
        },
        Case {
            what: "sbatch -n 4 -c 2: batch script",
            vars: &[
                ("SLURM_JOB_ID", "12"),
                ("SLURM_CPUS_ON_NODE", "8"),
                ("SLURM_CPUS_PER_TASK", "2"),
                ("SLURM_JOB_CPUS_PER_NODE", "8"),
                ("SLURM_NTASKS", "4"),
                ("SLURM_TASKS_PER_NODE", "4"),
            ],
            usable: 8,
            budget: (8, SlurmCpusOnNode),
            farm: (4, 2),
        },
        Case {
            what: "sbatch -n 4 -c 2: srun's task",
            vars: &[
                ("SLURM_JOB_ID", "12"),
                ("SLURM_STEP_ID", "0"),
                ("SLURM_CPUS_ON_NODE", "8"),
                ("SLURM_CPUS_PER_TASK", "2"),
                ("SLURM_STEP_TASKS_PER_NODE", "4"),
            ],
            usable: 2,
            budget: (2, SlurmCpusPerTask),
            farm: (2, 1),
        },
        Case {
            what: "sbatch -c 8: batch script",
            vars: &[
                ("SLURM_JOB_ID", "13"),
                ("SLURM_CPUS_ON_NODE", "8"),
                ("SLURM_CPUS_PER_TASK", "8"),
                ("SLURM_JOB_CPUS_PER_NODE", "8"),
                ("SLURM_TASKS_PER_NODE", "1"),
            ],
            usable: 8,
            budget: (8, SlurmCpusOnNode),
            farm: (1, 8),
        },
        Case {
            what: "sbatch -N 2 -n 8: batch script (node 0)",
            vars: &[
                ("SLURM_JOB_ID", "14"),
                ("SLURM_JOB_NUM_NODES", "2"),
                ("SLURM_CPUS_ON_NODE", "4"),
                ("SLURM_JOB_CPUS_PER_NODE", "4(x2)"),
                ("SLURM_TASKS_PER_NODE", "4(x2)"),
                ("SLURM_NODEID", "0"),
            ],
            usable: 4,
            budget: (4, SlurmCpusOnNode),
            farm: (4, 1),
        },
        Case {
            what: "uneven 3-node job, node 2, no SLURM_CPUS_ON_NODE",
            vars: &[
                ("SLURM_JOB_ID", "15"),
                ("SLURM_JOB_CPUS_PER_NODE", "8(x2),4"),
                ("SLURM_TASKS_PER_NODE", "8(x2),4"),
                ("SLURM_NODEID", "2"),
            ],
            usable: 16,
            budget: (4, SlurmJobCpusPerNode),
            farm: (4, 1),
        },
        Case {
            what: "only SLURM_TASKS_PER_NODE and SLURM_CPUS_PER_TASK",
            vars: &[
                ("SLURM_JOB_ID", "16"),
                ("SLURM_TASKS_PER_NODE", "3"),
                ("SLURM_CPUS_PER_TASK", "2"),
            ],
            usable: 16,
            budget: (6, SlurmTasksPerNode),
            farm: (3, 2),
        },
        Case {
            what: "sbatch -n 2 -c 1: batch script (captured)",
            vars: &[
                ("SLURM_JOB_ID", "101"),
                ("SLURM_CPUS_ON_NODE", "2"),
                ("SLURM_CPUS_PER_TASK", "1"),
                ("SLURM_JOB_CPUS_PER_NODE", "2"),
                ("SLURM_JOB_NUM_NODES", "1"),
                ("SLURM_NNODES", "1"),
                ("SLURM_NODEID", "0"),
                ("SLURM_NTASKS", "2"),
                ("SLURM_TASKS_PER_NODE", "2"),
            ],
            usable: 2,
            budget: (2, SlurmCpusOnNode),
            farm: (2, 1),
        },
        Case {
            what: "sbatch -n 2 -c 1, inside srun -n 1 (captured)",
            vars: &[
                ("SLURM_JOB_ID", "101"),
                ("SLURM_CPUS_ON_NODE", "2"),
                ("SLURM_CPUS_PER_TASK", "1"),
                ("SLURM_JOB_CPUS_PER_NODE", "2"),
                ("SLURM_NODEID", "0"),
                ("SLURM_NTASKS", "1"),
                ("SLURM_STEPID", "0"),
                ("SLURM_STEP_ID", "0"),
                ("SLURM_STEP_NUM_TASKS", "1"),
                ("SLURM_STEP_TASKS_PER_NODE", "1"),
                ("SLURM_TASKS_PER_NODE", "1"),
            ],
            usable: 2,
            budget: (1, SlurmCpusPerTask),
            farm: (1, 1),
        },
        Case {
            what: "sbatch -n 1 -c 2: batch script (captured)",
            vars: &[
                ("SLURM_JOB_ID", "102"),
                ("SLURM_CPUS_ON_NODE", "2"),
                ("SLURM_CPUS_PER_TASK", "2"),
                ("SLURM_JOB_CPUS_PER_NODE", "2"),
                ("SLURM_NODEID", "0"),
                ("SLURM_NTASKS", "1"),
                ("SLURM_TASKS_PER_NODE", "1"),
            ],
            usable: 2,
            budget: (2, SlurmCpusOnNode),
            farm: (1, 2),
        },
        Case {
            what: "sbatch --exclusive (captured on 2 CPUs)",
            vars: &[
                ("SLURM_JOB_ID", "103"),
                ("SLURM_CPUS_ON_NODE", "2"),
                ("SLURM_JOB_CPUS_PER_NODE", "2"),
                ("SLURM_NODEID", "0"),
                ("SLURM_TASKS_PER_NODE", "2"),
            ],
            usable: 2,
            budget: (2, SlurmCpusOnNode),
            farm: (2, 1),
        },
        Case {
            what: "sbatch --exclusive on 16 CPUs: batch script",
            vars: &[
                ("SLURM_JOB_ID", "104"),
                ("SLURM_CPUS_ON_NODE", "16"),
                ("SLURM_JOB_CPUS_PER_NODE", "16"),
                ("SLURM_TASKS_PER_NODE", "16"),
            ],
            usable: 16,
            budget: (16, SlurmCpusOnNode),
            farm: (16, 1),
        },
        Case {
            what: "SLURM_STEP_ID=batch counts as the batch script",
            vars: &[
                ("SLURM_JOB_ID", "105"),
                ("SLURM_STEP_ID", "batch"),
                ("SLURM_CPUS_ON_NODE", "8"),
                ("SLURM_CPUS_PER_TASK", "2"),
                ("SLURM_TASKS_PER_NODE", "4"),
            ],
            usable: 8,
            budget: (8, SlurmCpusOnNode),
            farm: (4, 2),
        },
        Case {
            what: "no SLURM",
            vars: &[],
            usable: 6,
            budget: (6, Usable),
            farm: (6, 1),
        },
    ]
}

#[test]
fn real_slurm_environments() {
    for c in cases() {
        let b =
            cpu_budget_with(env(c.vars), c.usable).unwrap_or_else(|e| panic!("{}: {e}", c.what));
        assert_eq!((b.count, b.source), c.budget, "{}", c.what);
        assert_eq!(b.capped_from, None, "{}", c.what);
        let (jobs, threads, why) = b.job_farm();
        assert_eq!((jobs, threads), c.farm, "{}: {why}", c.what);
        // Each says which variables it used.
        assert!(b.to_string().contains(b.source.as_str()), "{}: {b}", c.what);
        if let Some(t) = b.tasks_on_node {
            assert!(
                why.contains(&format!("SLURM_TASKS_PER_NODE={t}")),
                "{}: {why}",
                c.what
            );
        }
    }
}

#[test]
fn no_slurm_uses_the_usable_cpus() {
    let b = cpu_budget_with(env(&[]), 6).unwrap();
    assert_eq!(
        (b.count, b.source, b.capped_from),
        (6, CpuSource::Usable, None)
    );
    assert_eq!(cpu_budget_with(env(&[]), 0).unwrap().count, 1, "at least 1");
}

#[test]
fn slurm_figures_are_capped_by_the_usable_cpus() {
    let step = [("SLURM_STEP_ID", "3"), ("SLURM_CPUS_PER_TASK", "32")];
    let b = cpu_budget_with(env(&step), 2).unwrap();
    assert_eq!((b.count, b.capped_from), (2, Some(32)));
    assert_eq!(
        b.to_string(),
        "2 CPUs (SLURM_CPUS_PER_TASK=32, capped by the affinity mask and cgroup quota)"
    );
    // -n 4 -c 2 in a batch script pinned to 4 CPUs: 2 jobs of 2 threads fit, not 4.
    let batch = [
        ("SLURM_JOB_ID", "1"),
        ("SLURM_CPUS_ON_NODE", "8"),
        ("SLURM_CPUS_PER_TASK", "2"),
        ("SLURM_TASKS_PER_NODE", "4"),
    ];
    let b = cpu_budget_with(env(&batch), 4).unwrap();
    assert_eq!((b.count, b.capped_from), (4, Some(8)));
    let (jobs, threads, why) = b.job_farm();
    assert_eq!((jobs, threads), (2, 2), "{why}");
    assert!(why.contains("capped to 2"), "{why}");
}

#[test]
fn a_node_past_the_list_is_an_error() {
    let vars = [
        ("SLURM_JOB_ID", "1"),
        ("SLURM_JOB_CPUS_PER_NODE", "4(x2)"),
        ("SLURM_NODEID", "2"),
    ];
    let e = cpu_budget_with(env(&vars), 8).unwrap_err().to_string();
    assert!(
        e.contains("SLURM_JOB_CPUS_PER_NODE") && e.contains("node 2"),
        "{e}"
    );
}

#[test]
fn every_malformed_value_is_an_invalid_env_error() {
    let vars = [
        "SLURM_CPUS_PER_TASK",
        "SLURM_CPUS_ON_NODE",
        "SLURM_JOB_CPUS_PER_NODE",
        "SLURM_TASKS_PER_NODE",
    ];
    let values = [
        "abc",
        "0",
        "-2",
        "",
        "4.5",
        "99999999999999999999",
        " 4",
        "4x",
    ];
    for var in vars {
        for value in values {
            let pairs = [("SLURM_JOB_ID", "1"), (var, value)];
            match cpu_budget_with(env(&pairs), 8) {
                Err(Error::InvalidEnv {
                    var: v, value: got, ..
                }) => {
                    assert_eq!((v.as_str(), got.as_str()), (var, value));
                }
                other => panic!("{var}={value:?} gave {other:?}"),
            }
            let msg = cpu_budget_with(env(&pairs), 8).unwrap_err().to_string();
            assert!(
                msg.contains(var) && msg.contains(&format!("{value:?}")),
                "{msg}"
            );
        }
    }
    for bad in ["72(x2", "72(xa),36", ",", "36,", "(x2)"] {
        let pairs = [("SLURM_JOB_ID", "1"), ("SLURM_JOB_CPUS_PER_NODE", bad)];
        assert!(
            matches!(
                cpu_budget_with(env(&pairs), 8),
                Err(Error::InvalidEnv { .. })
            ),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn the_real_environment_is_read() {
    // Run this test binary again with SLURM variables set, as a job script would.
    if std::env::var_os("MULTIPROC_SIZING_CHILD").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "--exact",
            "print_budget",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        cmd.env("MULTIPROC_SIZING_CHILD", "1");
        for (k, _) in std::env::vars() {
            if k.starts_with("SLURM_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(run(&[("SLURM_CPUS_PER_TASK", "1")]).contains("BUDGET 1 CPU (SLURM_CPUS_PER_TASK)"));
    let bad = run(&[("SLURM_CPUS_PER_TASK", "abc")]);
    assert!(
        bad.contains("ERROR environment variable SLURM_CPUS_PER_TASK=\"abc\""),
        "{bad}"
    );
}

#[test]
#[ignore = "run by the_real_environment_is_read in a child process"]
fn print_budget() {
    match multiproc::cpu_budget() {
        Ok(b) => println!("BUDGET {b}"),
        Err(e) => println!("ERROR {e}"),
    }
}
