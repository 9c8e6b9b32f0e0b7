//! `multiproc`: run a command once per input, in parallel, like GNU parallel.
//!
//! This main only parses and validates the command line; with `--dry-run` it prints the commands
//! that would run (shell syntax, one per line, as GNU parallel's `--dry-run` does). Running jobs
//! is not written yet.
//!
//! Exit codes: 0 all ok, 1 some inputs failed, 2 usage or internal error.

// Parts of these modules serve the runner, which is not written yet.
#[allow(dead_code)]
mod args;
#[allow(dead_code)]
mod input;
#[allow(dead_code)]
mod joblog;
#[allow(dead_code)]
mod template;

use std::io::{self, Write};
use std::process::ExitCode;

use args::{Config, ConfigError};
use template::JobValues;

fn main() -> ExitCode {
    let config = match Config::parse_from(std::env::args_os()) {
        Ok(c) => c,
        Err(ConfigError::Clap(e)) => {
            // Prints help/version to stdout, errors to stderr; exits 0 or 2.
            e.exit()
        }
        Err(e) => {
            eprintln!("multiproc: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(code) => code,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("multiproc: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(config: &Config) -> io::Result<ExitCode> {
    if config.verbose > 0 {
        eprintln!("{config:#?}");
    }
    if !config.dry_run {
        eprintln!("multiproc: running jobs is not implemented yet; use --dry-run");
        return Ok(ExitCode::from(2));
    }
    let mut out = io::stdout().lock();
    let jobs = config.jobs.map_or(1, |j| j.get());
    for (i, values) in input::Combinations::new(&config.sources)?.enumerate() {
        let values = values?;
        let job = JobValues {
            seq: i as u64 + 1,
            slot: i % jobs + 1,
            args: &values,
        };
        writeln!(out, "{}", config.command.render_shell(&job))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
