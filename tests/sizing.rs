//! CPU sizing: SLURM variables, their precedence, capping, and every malformed value.

use multiproc::{CpuSource, Error, cpu_budget_with};

fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
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
fn cpus_per_task_comes_first() {
    let vars = [
        ("SLURM_CPUS_PER_TASK", "4"),
        ("SLURM_CPUS_ON_NODE", "16"),
        ("SLURM_JOB_CPUS_PER_NODE", "16"),
    ];
    let b = cpu_budget_with(env(&vars), 64).unwrap();
    assert_eq!((b.count, b.source), (4, CpuSource::SlurmCpusPerTask));
    assert_eq!(b.to_string(), "4 CPUs (SLURM_CPUS_PER_TASK)");
}

#[test]
fn one_node_job_uses_cpus_on_node_then_job_cpus_per_node() {
    let b = cpu_budget_with(
        env(&[("SLURM_CPUS_ON_NODE", "8"), ("SLURM_JOB_NUM_NODES", "1")]),
        64,
    )
    .unwrap();
    assert_eq!((b.count, b.source), (8, CpuSource::SlurmCpusOnNode));
    let b = cpu_budget_with(env(&[("SLURM_JOB_CPUS_PER_NODE", "72(x2),36")]), 128).unwrap();
    assert_eq!((b.count, b.source), (72, CpuSource::SlurmJobCpusPerNode));
    // A multi-node job: the node-level figures are not this process's budget.
    let b = cpu_budget_with(
        env(&[("SLURM_CPUS_ON_NODE", "8"), ("SLURM_JOB_NUM_NODES", "2")]),
        6,
    )
    .unwrap();
    assert_eq!((b.count, b.source), (6, CpuSource::Usable));
}

#[test]
fn slurm_figures_are_capped_by_the_usable_cpus() {
    let b = cpu_budget_with(env(&[("SLURM_CPUS_PER_TASK", "32")]), 2).unwrap();
    assert_eq!((b.count, b.capped_from), (2, Some(32)));
    assert_eq!(
        b.to_string(),
        "2 CPUs (SLURM_CPUS_PER_TASK=32, capped by the affinity mask and cgroup quota)"
    );
}

#[test]
fn every_malformed_value_is_an_invalid_env_error() {
    let vars = [
        "SLURM_CPUS_PER_TASK",
        "SLURM_CPUS_ON_NODE",
        "SLURM_JOB_CPUS_PER_NODE",
        "SLURM_JOB_NUM_NODES",
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
            let pairs = [(var, value)];
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
        let pairs = [("SLURM_JOB_CPUS_PER_NODE", bad)];
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
        for k in [
            "SLURM_CPUS_PER_TASK",
            "SLURM_CPUS_ON_NODE",
            "SLURM_JOB_CPUS_PER_NODE",
        ] {
            cmd.env_remove(k);
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
