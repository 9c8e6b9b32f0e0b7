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
//! Layout: [`prov`] turns the command line into a `Config` (flags, replacement strings, joblog);
//! this file turns the `Config` into jobs and engine options; [`engine`] runs them on worker
//! processes ([`job`] is one job, [`output`] prints their output).

mod engine;
mod job;
mod output;
mod prov;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;

use crate::engine::{EngineOpts, Halt, JobLog, JobSource, NoLog, NoProgress, Progress};
use crate::job::{Job, Program};
use crate::output::Output;
use crate::prov::{Config, HaltFail, JobLogWriter, UsageError};

/// The thread-count variables each job gets (unless already set).
const THREAD_VARS: [&str; 3] = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"];

/// Exit status for a usage error or bad input.
const USAGE: u8 = 2;
/// Exit status when the runner itself fails.
const INTERNAL: u8 = 255;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            if let Some(clap) = e.downcast_ref::<clap::Error>() {
                // Help and version go to stdout with status 0; usage errors exit 2.
                let _ = clap.print();
                return ExitCode::from(if clap.use_stderr() { USAGE } else { 0 });
            }
            eprintln!("multiproc: error: {e}");
            if e.is::<UsageError>() {
                ExitCode::from(USAGE)
            } else {
                ExitCode::from(INTERNAL)
            }
        }
    }
}

/// Makes jobs from the config's templates and inputs.
#[derive(Debug)]
struct Jobs<'a> {
    cfg: &'a Config,
    append_input: bool,
}

impl JobSource for Jobs<'_> {
    fn make(&self, seq: u64, slot: usize) -> Job {
        let cfg = self.cfg;
        let args = cfg.args_of(seq);
        let quote = cfg.shell;
        let mut words: Vec<String> = cfg
            .command
            .iter()
            .map(|t| t.render(&args, seq, slot, quote))
            .collect();
        if self.append_input {
            if quote {
                words.extend(args.iter().map(|a| job::shell_quote(a)));
            } else {
                words.extend(args.iter().cloned());
            }
        }
        let program = if cfg.shell {
            Program::Shell(words.join(" "))
        } else {
            Program::Argv(words)
        };
        Job {
            seq,
            slot,
            program,
            stdin: cfg.stdin.as_ref().map(|t| t.render(&args, seq, slot, false)),
            stdout: cfg.stdout.as_ref().map(|t| t.render(&args, seq, slot, false)),
            env: vec![
                ("PARALLEL_SEQ".to_string(), seq.to_string()),
                ("PARALLEL_JOBSLOT".to_string(), slot.to_string()),
            ],
            args,
        }
    }
}

/// How many jobs at once, the threads each gets, and why (for `--verbose`).
fn sizing(cfg: &Config) -> Result<(usize, usize, String), Box<dyn std::error::Error>> {
    let budget = multiproc::cpu_budget().map_err(|e| UsageError(e.to_string()))?;
    let cpus = budget.count;
    let (jobs, why) = match (cfg.jobs, cfg.threads_per_job) {
        (Some(j), _) => (j, "-j".to_string()),
        (None, Some(k)) => (
            (cpus / k).max(1),
            format!("{budget} / --threads-per-job {k}"),
        ),
        (None, None) => (cpus, budget.to_string()),
    };
    let threads = cfg.threads_per_job.unwrap_or((cpus / jobs).max(1));
    Ok((jobs, threads, why))
}

/// The body of `main`: parse, check, run, and pick the exit status.
fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let cfg = Config::parse(std::env::args().collect())?;
    let sources = cfg.sources.len();
    for t in cfg.command.iter().chain(&cfg.stdin).chain(&cfg.stdout) {
        if t.max_source() > sources {
            return Err(UsageError(format!(
                "{{{}}} names input source {} but there are only {sources}",
                t.max_source(),
                t.max_source()
            ))
            .into());
        }
    }
    let (jobs, threads, why) = sizing(&cfg)?;
    let env: Vec<(String, String)> = THREAD_VARS
        .iter()
        .filter(|v| std::env::var_os(v).is_none() || cfg.threads_per_job.is_some())
        .map(|v| (v.to_string(), threads.to_string()))
        .collect();
    let total = cfg.total();
    // Jobs already done according to the joblog.
    let previous: HashMap<u64, bool> = match &cfg.joblog {
        Some(path) => prov::read_joblog(path)?,
        None => HashMap::new(),
    };
    let seqs: Vec<u64> = (1..=total)
        .filter(|seq| match previous.get(seq) {
            Some(_) if cfg.resume => false,
            Some(&ok) if cfg.resume_failed => !ok,
            _ => true,
        })
        .collect();
    let source = Jobs {
        cfg: &cfg,
        append_input: !cfg.uses_input(),
    };
    if cfg.verbose {
        eprintln!(
            "multiproc: {jobs} jobs at once ({why}), {threads} thread{} per job, {} of {total} jobs to run",
            if threads == 1 { "" } else { "s" },
            seqs.len()
        );
    }
    if cfg.dry_run {
        for &seq in &seqs {
            let job = source.make(seq, 1);
            let mut line = job.program.display();
            if let Some(i) = &job.stdin {
                line.push_str(&format!(" < {}", job::shell_quote(i)));
            }
            if let Some(o) = &job.stdout {
                line.push_str(&format!(" > {}", job::shell_quote(o)));
            }
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut log: Box<dyn JobLog> = match &cfg.joblog {
        Some(path) => {
            let append = cfg.resume || cfg.resume_failed;
            Box::new(JobLogWriter::open(path, append).map_err(|e| {
                UsageError(format!("cannot write joblog {}: {e}", path.display()))
            })?)
        }
        None => Box::new(NoLog),
    };
    if seqs.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let halt = cfg.halt.map(|h| Halt {
        when: h.when,
        fail: match h.fail {
            HaltFail::Count(n) => n,
            HaltFail::Percent(p) => ((total as f64 * p / 100.0).ceil() as u64).max(1),
        },
    });
    let opts = EngineOpts {
        jobs,
        retries: cfg.retries,
        timeout: cfg.timeout,
        halt,
        env,
    };
    let mut output = Output::new(cfg.keep_order, cfg.results.clone());
    output.expect(&seqs);
    let show_bar = cfg.bar || std::io::stderr().is_terminal();
    let mut progress: Box<dyn Progress> = if show_bar {
        Box::new(Bar::new(seqs.len() as u64))
    } else {
        Box::new(NoProgress)
    };
    let summary = engine::run(
        &opts,
        &source,
        seqs,
        &mut *log,
        &mut output,
        &mut *progress,
    )
    .map_err(|e| format!("{e}"))?;
    if let Some(sig) = summary.interrupted {
        eprintln!(
            "multiproc: stopped by signal {sig}: {} jobs done, running jobs ended (not logged: --resume runs them again)",
            summary.done
        );
        return Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8));
    }
    if summary.halted {
        eprintln!(
            "multiproc: --halt: stopped after {} failed jobs",
            summary.failed
        );
    }
    Ok(ExitCode::from(summary.failed.min(101) as u8))
}

/// The `--bar` progress bar (indicatif), with ETA.
#[derive(Debug)]
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(len: u64) -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} jobs, ETA {eta}",
        ) {
            bar.set_style(style);
        }
        Bar(bar)
    }
}

impl Progress for Bar {
    fn tick(&mut self) {
        self.0.inc(1);
    }
    fn suspend(&mut self, f: &mut dyn FnMut()) {
        self.0.suspend(f)
    }
    fn finish(&mut self) {
        self.0.finish();
    }
}
