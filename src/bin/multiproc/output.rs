//! Where finished jobs' output goes: grouped blocks on the runner's stdout and stderr (never
//! interleaved line by line), in input order with `-k` (a reorder buffer keyed by seq), and one
//! directory per job with `--results DIR`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::job::{Job, JobOutcome};

/// One job's output waiting to be printed.
#[derive(Debug, Default)]
struct Block {
    /// The job's stdout.
    stdout: Vec<u8>,
    /// The job's stderr, printed after its stdout.
    stderr: Vec<u8>,
}

/// Prints each finished job's output as one block: its stdout, then its stderr.
#[derive(Debug)]
pub(crate) struct Output {
    /// `-k`.
    keep_order: bool,
    /// `--results DIR`.
    results: Option<PathBuf>,
    /// With `-k`: the next seq to print, and blocks that came early.
    next: u64,
    waiting: BTreeMap<u64, Block>,
    /// The highest seq handed out so far.
    handed_out: u64,
    /// Set once stdout is a closed pipe: output is dropped from then on.
    stdout_closed: bool,
}

impl Output {
    /// An output sink (with `-k`, told of each job handed out by [`Output::expect_up_to`]).
    pub(crate) fn new(keep_order: bool, results: Option<PathBuf>) -> Self {
        Output {
            keep_order,
            results,
            next: 1,
            handed_out: 0,
            waiting: BTreeMap::new(),
            stdout_closed: false,
        }
    }

    /// Tells the `-k` buffer that job `seq` was handed out; the seqs between the previous one
    /// handed out and `seq` were skipped (`--resume`) and will never report. Called in
    /// increasing seq order, before that job's [`Output::finished`].
    pub(crate) fn expect_up_to(&mut self, seq: u64) {
        if self.keep_order {
            // Skipped seqs are entered as empty blocks, so the buffer never stalls on them.
            for gap in self.handed_out + 1..seq {
                self.waiting.insert(gap, Block::default());
            }
        }
        self.handed_out = self.handed_out.max(seq);
    }

    /// A job ended: keep its `--results` files and print its block (now, or once every job
    /// before it has been printed, with `-k`).
    pub(crate) fn finished(&mut self, job: &Job, outcome: &JobOutcome) -> io::Result<()> {
        if let Some(dir) = &self.results {
            write_results(dir, job, outcome)?;
        }
        let block = Block {
            stdout: outcome.stdout.clone(),
            stderr: outcome.stderr.clone(),
        };
        if !self.keep_order {
            return self.print(&block);
        }
        self.waiting.insert(job.seq, block);
        self.drain()
    }

    /// Prints every block that is next in order.
    fn drain(&mut self) -> io::Result<()> {
        if !self.keep_order {
            return Ok(());
        }
        while let Some(block) = self.waiting.remove(&self.next) {
            self.print(&block)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Prints whatever is still buffered, in order (the run stopped early).
    pub(crate) fn flush_rest(&mut self) -> io::Result<()> {
        for (_, block) in std::mem::take(&mut self.waiting) {
            self.print(&block)?;
        }
        Ok(())
    }

    fn print(&mut self, block: &Block) -> io::Result<()> {
        if !block.stdout.is_empty() && !self.stdout_closed {
            let mut out = io::stdout().lock();
            match out.write_all(&block.stdout).and_then(|()| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self.stdout_closed = true,
                Err(e) => return Err(e),
            }
        }
        if !block.stderr.is_empty() {
            let mut err = io::stderr().lock();
            let _ = err.write_all(&block.stderr);
            let _ = err.flush();
        }
        Ok(())
    }
}

/// GNU parallel's escaping of an argument used as a directory name: `+` → `+p`, `/` → `+z`,
/// and `.`/`..` (which would not name a new directory) → `+.`/`+..`; an empty one is `+e`.
pub(crate) fn results_component(arg: &str) -> String {
    match arg {
        "" => "+e".to_string(),
        "." | ".." => format!("+{arg}"),
        _ => arg
            .replace('+', "+p")
            .replace('/', "+z")
            .replace('\0', "+0"),
    }
}

/// The directory of a job under `--results DIR`: `DIR/1/ARG1/2/ARG2/...` as GNU parallel lays it.
pub(crate) fn results_dir(dir: &Path, args: &[String]) -> PathBuf {
    let mut path = dir.to_path_buf();
    for (i, arg) in args.iter().enumerate() {
        path.push((i + 1).to_string());
        path.push(results_component(arg));
    }
    path
}

/// Writes `seq`, `stdout` and `stderr` of a job under its `--results` directory.
fn write_results(dir: &Path, job: &Job, outcome: &JobOutcome) -> io::Result<()> {
    let path = results_dir(dir, &job.args);
    fs::create_dir_all(&path)?;
    fs::write(path.join("seq"), format!("{}\n", job.seq))?;
    fs::write(path.join("stdout"), &outcome.stdout)?;
    fs::write(path.join("stderr"), &outcome.stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_paths() {
        let p = results_dir(Path::new("out"), &["a/b+c".into(), "..".into()]);
        assert_eq!(p, Path::new("out/1/a+zb+pc/2/+.."));
        assert_eq!(results_component(""), "+e");
    }
}
