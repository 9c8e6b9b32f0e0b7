//! Where finished jobs' output goes: grouped blocks on the runner's stdout and stderr (never
//! interleaved line by line), in input order with `-k` (a reorder buffer keyed by seq), and one
//! directory per job with `--results DIR`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::job::Job;
use crate::spill::Held;

/// One job's output waiting to be printed.
#[derive(Debug)]
struct Block {
    /// The job's stdout.
    stdout: Held,
    /// The job's stderr, printed after its stdout.
    stderr: Held,
}

impl Default for Block {
    fn default() -> Self {
        Block {
            stdout: Held::Bytes(Vec::new()),
            stderr: Held::Bytes(Vec::new()),
        }
    }
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
    pub(crate) fn finished(&mut self, job: &Job, stdout: Held, stderr: Held) -> io::Result<()> {
        let mut block = Block { stdout, stderr };
        if let Some(dir) = &self.results {
            write_results(dir, job, &mut block)?;
        }
        if !self.keep_order {
            return self.print(&mut block);
        }
        self.waiting.insert(job.seq, block);
        self.drain()
    }

    /// Prints every block that is next in order.
    fn drain(&mut self) -> io::Result<()> {
        if !self.keep_order {
            return Ok(());
        }
        while let Some(mut block) = self.waiting.remove(&self.next) {
            self.print(&mut block)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Prints whatever is still buffered, in order (the run stopped early).
    pub(crate) fn flush_rest(&mut self) -> io::Result<()> {
        for (_, mut block) in std::mem::take(&mut self.waiting) {
            self.print(&mut block)?;
        }
        Ok(())
    }

    fn print(&mut self, block: &mut Block) -> io::Result<()> {
        if !block.stdout.is_empty() && !self.stdout_closed {
            let mut out = io::stdout().lock();
            match block.stdout.write_to(&mut out).and_then(|()| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self.stdout_closed = true,
                Err(e) => return Err(e),
            }
        }
        if !block.stderr.is_empty() {
            let mut err = io::stderr().lock();
            let _ = block.stderr.write_to(&mut err);
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
fn write_results(dir: &Path, job: &Job, block: &mut Block) -> io::Result<()> {
    let path = results_dir(dir, &job.args);
    fs::create_dir_all(&path)?;
    fs::write(path.join("seq"), format!("{}\n", job.seq))?;
    block
        .stdout
        .write_to(&mut fs::File::create(path.join("stdout"))?)?;
    block
        .stderr
        .write_to(&mut fs::File::create(path.join("stderr"))?)
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
