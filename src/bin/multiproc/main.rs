//! `multiproc`: run a batch program over many inputs, like GNU parallel, for SLURM job scripts.
//!
//! ```text
//! multiproc [OPTIONS] [--] COMMAND [ARGS...] ::: INPUT...
//! multiproc --stdin {} --stdout {}.out ./mmul ::: in1 in2 in3     # ./mmul < inK > inK.out
//! ```
//!
//! Exit status: 0 when every job succeeded; otherwise the number of failed jobs, capped at 101;
//! 2 for a usage error or bad input (before any job starts); 128+N when stopped by signal N;
//! 255 when the runner itself failed.
//!
//! Behaviour in brief (details on each module):
//! - `-j N` worker processes (default: [`multiproc::cpu_budget`], SLURM-aware; `-v` says which
//!   and why) take jobs from a queue; each job runs without a shell unless `--shell`, in its own
//!   process group, with `OMP_NUM_THREADS`/`MKL_NUM_THREADS`/`OPENBLAS_NUM_THREADS` set to
//!   CPUs / jobs unless already set (`--threads-per-job K` sets K and divides the default `-j`),
//!   plus `PARALLEL_SEQ` and `PARALLEL_JOBSLOT`.
//! - Each job's stdout, then its stderr, is printed as one block when it ends (`-k`: in input
//!   order); `--results DIR` also keeps them in `DIR/1/INPUT/{stdout,stderr,seq}`.
//! - `--joblog`: a worker appends the job's line the moment the job ends (its Command a command
//!   line that pastes into a shell); `--resume` skips the jobs in it (by seq), `--resume-failed`
//!   the ones that succeeded.
//! - GNU parallel's everyday flags ([`flags`]): input shaping ([`shape`], [`feed`]), output
//!   modes ([`streams`]), start limits ([`limits`]), `--pipe`/`--pipepart` ([`pipe`]); GNU
//!   parallel options left out say so ([`gnu`]). docs/cli.md has the table.
//! - SIGINT/SIGTERM/SIGHUP: no new jobs; running jobs' groups get SIGTERM, then SIGKILL after
//!   2 s; jobs ended that way are not logged (so `--resume` runs them); exit 128+N. A second
//!   signal kills at once. Workers and their jobs die with the runner, even after a SIGKILL.
//!
//! # Caveats
//!
//! - Inputs on the command line (`:::`) and in regular files are read through before the first
//!   job starts: a bad input (an unreadable file, a line that is not UTF-8) is an error before
//!   any job runs, and the total and the ETA are known. They are then read again as jobs start,
//!   never held in memory (only `--header`, `-X`/`-m` and `--shuf` keep them all). Stdin, or a file that is not a regular one
//!   (a pipe, a FIFO, a terminal), is read as the jobs run, by a thread started after the
//!   workers are forked: jobs start as lines come, an endless input works, and the bar counts
//!   jobs until the input ends. A streamed input that fails part way (a line that is not UTF-8)
//!   stops the hand-out of jobs; the running ones finish, and the exit status is 2 (or the number
//!   of failed jobs, if higher). `--halt` with a percentage reads the whole input first.
//! - A job's captured output goes to unlinked temporary files in `$TMPDIR`; up to 4 MiB per
//!   stream comes to the runner as bytes, a bigger one as the file itself ([`spill`]), so the
//!   runner's memory stays bounded (a job printing 1 GB: peak RSS ~3.5 MB) but `$TMPDIR` needs
//!   room for the output of the running jobs, and of the finished ones `-k` is holding back.
//! - "Nothing runs twice" holds up to a small window: a job killed (with the runner) after it has
//!   written its results but before it has exited counts as not done, and `--resume` runs it
//!   again. Once a job has exited, its worker writes its joblog line even if the runner is gone.
//!
//! Layout: [`args`] turns the command line into a validated `Config` ([`flags`] for GNU
//! parallel's other flags, [`template`] for the replacement strings, [`input`] for the input
//! sources, [`joblog`] for `--joblog`, [`quote`] for shell quoting); [`feed`] turns the inputs
//! into jobs; this file sizes the run and builds the engine options; [`engine`] runs the jobs on
//! worker processes ([`job`] runs one job, [`streams`] wires its streams, [`spill`] keeps big
//! outputs out of memory, [`output`] prints them).

// `command_words`, `ConfigError::exit_code`, `JoblogState::failed` and `JoblogWriter::write`
// serve the modules' own tests and other callers; the runner appends lines from its workers.
#[allow(dead_code)]
mod args;
mod bar;
mod engine;
mod feed;
mod flags;
mod gnu;
mod halt;
mod input;
mod job;
#[allow(dead_code)]
mod joblog;
#[cfg(test)]
mod joblog_fuzz;
mod limits;
mod output;
mod pipe;
mod quote;
mod seqset;
mod shape;
mod signals;
mod spill;
mod streams;
mod template;

// multinode (issue 14): the `plot` subcommand, the multi-node runner and its agents.
mod agent;
mod cluster;
mod gather;
mod nodes;
mod plot;
mod proto;
mod svg;

use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::args::{Config, ConfigError, Halt, Jobs, Resume, Threshold};
use crate::bar::Bar;
use crate::engine::{EngineOpts, HaltRule, JobSource, Next, NoProgress, Progress};
use crate::feed::Feed;
use crate::joblog::{JoblogError, JoblogState, JoblogWriter};
use crate::output::Output;

/// The thread-count variables each job gets (unless already set).
const THREAD_VARS: [&str; 3] = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"];

/// Exit status for a usage error or bad input.
const USAGE: u8 = 2;
/// Exit status when the runner itself fails.
const INTERNAL: u8 = 255;

/// An error that ends the run, with its exit status.
#[derive(Debug)]
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// Bad input found before any job starts.
    fn usage(message: impl std::fmt::Display) -> Self {
        Failure {
            message: message.to_string(),
            code: USAGE,
        }
    }
}

fn main() -> ExitCode {
    // Subcommands (issue 14), chosen by the first argument only: `multiproc -- plot` runs a
    // command named plot.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == plot::SUBCOMMAND) {
        return plot::main(argv.split_off(2));
    }
    if argv.get(1).is_some_and(|a| a == agent::SUBCOMMAND) {
        argv.remove(1);
        return agent::main(argv);
    }
    let config = match Config::parse_from(std::env::args_os()) {
        Ok(c) => c,
        // Help and version go to stdout with status 0; usage errors to stderr with status 2.
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("multiproc: {e}");
            return ExitCode::from(USAGE);
        }
    };
    match run(&config) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("multiproc: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// How many jobs at once, the threads each gets, whether those threads were asked for
/// (`--threads-per-job`: then the thread variables are overridden), and why (for `--verbose`).
///
/// `-j` wins; `--threads-per-job K` divides the CPU budget ([`multiproc::cpu_budget`]: SLURM's
/// allocation, capped by the affinity mask and cgroup quota); otherwise the budget's job farm
/// ([`multiproc::CpuBudget::job_farm`]): in a batch script one job per task on this node with
/// `SLURM_CPUS_PER_TASK` threads each, elsewhere one job per CPU. Without `--threads-per-job` a
/// job gets `SLURM_CPUS_PER_TASK` threads in a batch script, else max(1, CPUs / jobs).
fn sizing(cfg: &Config) -> Result<(usize, usize, bool, String), Failure> {
    let budget = multiproc::cpu_budget().map_err(Failure::usage)?;
    let cpus = budget.count;
    let k = cfg.threads_per_job.map(|k| k.get());
    let (farm_jobs, farm_threads, farm_why) = budget.job_farm();
    let (jobs, why) = match (cfg.jobs, k) {
        (Some(Jobs::Count(j)), _) => (j.get(), "-j".to_string()),
        (Some(j), _) => (j.resolve(cpus), format!("-j of {budget}")),
        (None, Some(k)) => (
            (cpus / k).max(1),
            format!("{budget} / --threads-per-job {k}"),
        ),
        (None, None) => (farm_jobs, farm_why),
    };
    let threads = match (k, budget.cpus_per_task) {
        (Some(k), _) => k,
        (None, Some(_)) => farm_threads,
        (None, None) => (cpus / jobs).max(1),
    };
    Ok((jobs, threads, k.is_some(), why))
}

/// How long to wait for an earlier run's processes to let go of the joblog.
const JOBLOG_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Takes an exclusive `flock` on the joblog for the whole run. The workers inherit the open file
/// (forked, not exec'd), so the lock is released only when the runner and every worker are gone:
/// a `--resume` right after a killed run waits for a worker still writing its last line, instead
/// of reading the log without it and running that job again.
fn lock_joblog(path: &Path) -> Result<Flock<File>, Failure> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| Failure::usage(format!("--joblog {}: {e}", path.display())))?;
    let deadline = Instant::now() + JOBLOG_LOCK_WAIT;
    let mut file = file;
    let mut said = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                if !said {
                    eprintln!(
                        "multiproc: --joblog {}: in use by another multiproc; waiting",
                        path.display()
                    );
                    said = true;
                }
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, e)) => {
                return Err(Failure::usage(format!(
                    "--joblog {}: in use by another multiproc run (flock: {e})",
                    path.display()
                )));
            }
        }
    }
}

/// Opens the joblog: checks it is one of ours, reads what an earlier run did (for `--resume*`),
/// then creates it afresh (no resume) or reopens it for appending. The log is read once, under
/// the lock, and only to resume: before that only its header is looked at (a million-line log
/// costs one streamed pass, see [`JoblogState::read`]).
fn open_joblog(cfg: &Config) -> Result<JoblogState, Failure> {
    let Some(path) = &cfg.joblog else {
        return Ok(JoblogState::default());
    };
    let read_err = |e: JoblogError| match e {
        JoblogError::NotAJoblog { .. } => Failure::usage(format!(
            "--joblog {}: {e}; refusing to use or overwrite it",
            path.display()
        )),
        e => Failure::usage(format!("--joblog {}: {e}", path.display())),
    };
    // Refuse a file that is not a joblog, even when it would only be overwritten.
    JoblogState::check_header(path).map_err(read_err)?;
    if cfg.dry_run {
        return JoblogState::read(path).map_err(read_err);
    }
    // Held until the process exits (and, through the workers, until they do too).
    std::mem::forget(lock_joblog(path)?);
    if cfg.resume == Resume::No {
        JoblogWriter::create(path).map_err(|e| Failure::usage(format!("--joblog: {e}")))?;
        return Ok(JoblogState::default());
    }
    // Read under the lock: an earlier run's last lines may have landed meanwhile.
    let state = JoblogState::read(path).map_err(read_err)?;
    let (_, torn) =
        JoblogWriter::resume(path).map_err(|e| Failure::usage(format!("--joblog: {e}")))?;
    if let Some(t) = torn {
        eprintln!(
            "multiproc: --joblog {}: dropped a torn last line (line {}, {} bytes): that job runs again",
            path.display(),
            t.line_no,
            t.bytes
        );
    }
    Ok(state)
}

/// `--header`: every `{name}` in the templates becomes its column.
fn resolve_names(cfg: &mut Config, names: &[String]) -> Result<(), Failure> {
    let templates = [
        ("COMMAND", Some(&mut cfg.command)),
        ("--stdin", cfg.stdin.as_mut()),
        ("--stdout", cfg.stdout.as_mut()),
        ("--tagstring", cfg.tag.as_mut()),
        ("--wd", cfg.wd.as_mut()),
    ];
    for (flag, t) in templates {
        if let Some(t) = t {
            t.resolve_names(names)
                .map_err(|e| Failure::usage(format!("{flag}: {e}")))?;
        }
    }
    Ok(())
}

/// The body of `main`: check, run, and pick the exit status.
fn run(cfg: &Config) -> Result<ExitCode, Failure> {
    // The batch script of a multi-node allocation: one agent per node (issue 14).
    if !cfg.dry_run
        && let Some(nodes) = nodes::allocation(cfg.nodes.as_deref())?
    {
        return cluster::run(cfg, &nodes);
    }
    let (jobs, threads, explicit, why) = sizing(cfg)?;
    let env: Vec<(String, String)> = THREAD_VARS
        .iter()
        .filter(|v| explicit || std::env::var_os(v).is_none())
        .map(|v| (v.to_string(), threads.to_string()))
        .collect();
    let state = open_joblog(cfg)?;
    let (inputs, names) = feed::open_inputs(cfg, jobs)?;
    let mut cfg = cfg.clone();
    if cfg.extras.shape.header {
        resolve_names(&mut cfg, &names)?;
    }
    let cfg = &cfg;
    let mut feed = Feed::new(cfg, inputs, state);
    let counts = feed.counts();
    if cfg.verbose > 0 {
        eprintln!(
            "multiproc: {jobs} job{} at once ({why}), {threads} thread{} per job, {}",
            if jobs == 1 { "" } else { "s" },
            if threads == 1 { "" } else { "s" },
            match counts {
                Some((total, to_run)) => format!("{to_run} of {total} jobs to run"),
                None => format!("jobs read from {} as they come", cfg.sources[0]),
            }
        );
    }
    if cfg.dry_run {
        loop {
            match feed.next_job(1, Duration::from_secs(1)) {
                Next::Job(job) => println!("{}", job.command_line),
                Next::NotYet => {}
                Next::End(Ok(())) => return Ok(ExitCode::SUCCESS),
                Next::End(Err(e)) => return Err(Failure::usage(e)),
            }
        }
    }
    if counts.is_some_and(|(_, to_run)| to_run == 0) {
        return Ok(ExitCode::SUCCESS);
    }
    let total = counts.map_or(0, |(total, _)| total);
    let halt = match cfg.halt {
        Halt::Never => None,
        Halt::When {
            when,
            on,
            threshold,
        } => Some(HaltRule {
            when,
            on,
            count: match threshold {
                Threshold::Count(n) => n.get(),
                Threshold::Percent(p) => ((total as f64 * p / 100.0).ceil() as u64).max(1),
            },
        }),
    };
    let opts = EngineOpts {
        jobs,
        max_attempts: cfg.max_attempts.get(),
        timeout: cfg.timeout,
        halt,
        env,
        joblog: cfg.joblog.clone(),
        output: cfg.extras.output,
        sched: cfg.extras.sched.clone(),
        print_jobs: cfg.extras.print_jobs,
    };
    let mut output = Output::new(cfg.keep_order, cfg.results.clone());
    let to_run = counts.map(|(_, to_run)| to_run);
    let mut progress: Box<dyn Progress> = if cfg.bar || std::io::stderr().is_terminal() {
        Box::new(Bar::new(to_run))
    } else {
        Box::new(NoProgress)
    };
    let summary = engine::run(
        &opts,
        &mut feed,
        to_run.map(|n| n as usize),
        &mut output,
        &mut *progress,
    )
    .map_err(|e| Failure {
        message: e.to_string(),
        code: INTERNAL,
    })?;
    if let Some(sig) = summary.interrupted {
        eprintln!(
            "multiproc: stopped by signal {sig} after {} jobs; the jobs it ended are not in the joblog (--resume runs them)",
            summary.done
        );
        return Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8));
    }
    if summary.halted {
        eprintln!(
            "multiproc: --halt: stopped after {} jobs ({} failed)",
            summary.done, summary.failed
        );
    }
    if let Some(e) = &summary.input_error {
        eprintln!(
            "multiproc: {e}; no more jobs were started after {} ({} failed)",
            summary.done, summary.failed
        );
        return Ok(ExitCode::from(
            summary.failed.clamp(u64::from(USAGE), 101) as u8
        ));
    }
    Ok(ExitCode::from(summary.failed.min(101) as u8))
}
