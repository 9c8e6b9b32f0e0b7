//! The agent of a multi-node run: `multiproc __agent ARGS...` (hidden; started by the runner
//! with one `srun` step per node, see [`crate::cluster`]), with the runner's own arguments.
//!
//! It sizes itself from its node's allocation like a one-node run (`-j`, else the CPU budget
//! over `--threads-per-job`), says hello (node name, slots) on stdout, then runs the local
//! [`engine`](crate::engine) with a [`JobSource`] fed by the runner's `Run` frames on stdin and
//! a [`Sink`] that sends each finished job back as a `Done` frame on stdout. The engine asks for
//! a job only when a slot is free and the runner sends no more than the agent's slots, so a node
//! gets more work exactly when it has a free slot. Each job is made here, with the agent's slot
//! (`{%}` is per node and slot, `{host}` is the node), and gets `MULTIPROC_NODE`,
//! `PARALLEL_SSHLOGIN` and `PARALLEL_SSHHOST` (GNU parallel's variables) set to the node's name.
//! The agent writes no joblog: the runner writes
//! each line, with the node as the Host column.
//!
//! The end of stdin (the runner closed it) ends the run: running jobs finish, then the agent
//! exits. A signal (SLURM's end of job, or the runner's stop) stops it as on one node: running
//! jobs are ended and not reported, so `--resume` runs them again. If the runner dies, stdout
//! breaks and the agent stops.

use std::ffi::OsString;
use std::io::{BufReader, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::Jobs;
use crate::args::Config;
use crate::engine::{self, EngineOpts, JobSource, Next, NoProgress, Sink};
use crate::job::{Job, JobOutcome};
use crate::proto::{FromAgent, ToAgent, read_frame, write_frame};
use crate::spill::{Captured, Held};

/// The hidden first argument that starts an agent.
pub(crate) const SUBCOMMAND: &str = "__agent";

/// This node's name: `SLURMD_NODENAME` (set by slurmd in every step), else the host name.
pub(crate) fn node_name() -> String {
    std::env::var("SLURMD_NODENAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Writes one line to stderr with one write, so agents sharing a terminal do not interleave.
fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// The job maker of `cfg`, as the one-node runner builds it.
pub(crate) fn jobs_of(cfg: &Config) -> Jobs<'_> {
    let any_single = cfg
        .stdin
        .iter()
        .chain(&cfg.stdout)
        .any(|t| t.has_replacements());
    Jobs {
        cfg,
        no_append: !cfg.command.has_replacements() && any_single,
    }
}

/// Jobs from the runner's `Run` frames, read by a thread started with the first job asked for
/// (after the engine has forked its workers).
struct FromRunner<'a> {
    jobs: Jobs<'a>,
    node: String,
    rx: Option<Receiver<ToAgent>>,
}

impl JobSource for FromRunner<'_> {
    fn next_job(&mut self, slot: usize, wait: Duration) -> Next {
        if self.rx.is_none() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let spawned = std::thread::Builder::new()
                .name("multiproc-agent-in".into())
                .spawn(move || {
                    let mut stdin = BufReader::new(std::io::stdin().lock());
                    loop {
                        match read_frame::<_, ToAgent>(&mut stdin) {
                            Ok(Some(msg)) => {
                                if tx.send(msg).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => return,
                            Err(e) => {
                                say(&format!("multiproc agent: from the runner: {e}"));
                                return;
                            }
                        }
                    }
                });
            if let Err(e) = spawned {
                return Next::End(Err(format!("cannot start reading from the runner: {e}")));
            }
            self.rx = Some(rx);
        }
        match self.rx.as_ref().expect("set above").recv_timeout(wait) {
            Ok(ToAgent::Run { seq, args }) => {
                let mut job = self.jobs.make(seq, slot, args);
                job.env.push(("MULTIPROC_NODE".into(), self.node.clone()));
                job.env
                    .push(("PARALLEL_SSHLOGIN".into(), self.node.clone()));
                Next::Job(job)
            }
            Err(RecvTimeoutError::Timeout) => Next::NotYet,
            Err(RecvTimeoutError::Disconnected) => Next::End(Ok(())),
        }
    }
}

/// Whether the local run is stopping (the engine's flag, shared with its workers).
fn stopping() -> bool {
    let flag = crate::job::STOP_FLAG.load(Ordering::SeqCst);
    // SAFETY: STOP_FLAG is null or points into a mapping that is never unmapped
    // (`job::shared_flag`).
    !flag.is_null() && unsafe { (*flag).load(Ordering::SeqCst) } != 0
}

/// Sends finished jobs back to the runner.
///
/// Which jobs finished is the workers' call, as on one node: they "log" to `/dev/null`, so
/// `outcome.logged` says the worker counted the job as finished. A job a worker did not log
/// because the run is stopping (not started, or killed by the stop: SLURM signals the job and
/// the agent at once) is not sent: the runner does not log it and `--resume` runs it. A job
/// whose worker died is sent (failed) unless the run is stopping.
struct ToRunner;

impl Sink for ToRunner {
    fn expect_up_to(&mut self, _: u64) {}
    fn finished(
        &mut self,
        job: &Job,
        outcome: &JobOutcome,
        stdout: Held,
        stderr: Held,
    ) -> std::io::Result<()> {
        if !outcome.logged && (outcome.attempts == 0 || stopping()) {
            return Ok(());
        }
        // A spilled stream is read back here: across nodes, output travels in the frame.
        let mut outcome = outcome.clone();
        outcome.stdout = Captured::bytes(stdout.into_bytes()?);
        outcome.stderr = Captured::bytes(stderr.into_bytes()?);
        let msg = FromAgent::Done {
            slot: job.slot,
            command_line: job.command_line.clone(),
            outcome,
        };
        write_frame(&mut std::io::stdout().lock(), &msg)
    }
    fn flush_rest(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// `multiproc __agent ARGS...`: `args` is the runner's whole argv (program name first).
pub(crate) fn main(args: Vec<OsString>) -> ExitCode {
    let cfg = match Config::parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            say(&format!("multiproc agent: {e}"));
            return ExitCode::from(crate::USAGE);
        }
    };
    let node = node_name();
    crate::template::set_host(&node);
    match run(&cfg, &node) {
        Ok(code) => code,
        Err(e) => {
            say(&format!("multiproc agent on {node}: {e}"));
            ExitCode::from(crate::INTERNAL)
        }
    }
}

fn run(cfg: &Config, node: &str) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (slots, threads, explicit, why) = crate::sizing(cfg).map_err(|f| f.message)?;
    if cfg.verbose > 0 {
        say(&format!(
            "multiproc agent on {node}: {slots} job{} at once ({why}), {threads} thread{} per job",
            if slots == 1 { "" } else { "s" },
            if threads == 1 { "" } else { "s" },
        ));
    }
    let env: Vec<(String, String)> = crate::THREAD_VARS
        .iter()
        .filter(|v| explicit || std::env::var_os(v).is_none())
        .map(|v| (v.to_string(), threads.to_string()))
        .collect();
    write_frame(
        &mut std::io::stdout().lock(),
        &FromAgent::Hello {
            node: node.to_string(),
            slots,
            pid: std::process::id(),
        },
    )?;
    let opts = EngineOpts {
        jobs: slots,
        max_attempts: cfg.max_attempts.get(),
        timeout: cfg.timeout,
        halt: None,
        env,
        // The workers' "joblog" only records their decision (see `ToRunner`).
        joblog: Some("/dev/null".into()),
    };
    let mut source = FromRunner {
        jobs: jobs_of(cfg),
        node: node.to_string(),
        rx: None,
    };
    let summary = engine::run(&opts, &mut source, None, &mut ToRunner, &mut NoProgress)?;
    Ok(match summary.interrupted {
        Some(sig) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        None => ExitCode::SUCCESS,
    })
}
