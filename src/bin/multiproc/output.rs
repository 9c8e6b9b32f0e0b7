//! Where finished jobs' output goes: grouped blocks on the runner's stdout and stderr (never
//! interleaved line by line), in input order with `-k` (a reorder buffer keyed by seq), and one
//! directory per job with `--results DIR`.

use std::collections::{BTreeMap, VecDeque};
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
    /// `--tag`: `TAG\t`, printed before each line.
    tag: Option<Vec<u8>>,
}

impl Default for Block {
    fn default() -> Self {
        Block {
            stdout: Held::Bytes(Vec::new()),
            stderr: Held::Bytes(Vec::new()),
            tag: None,
        }
    }
}

/// Writes through to `inner`, with `prefix` before each line (`--tag`).
struct Tagged<'a> {
    inner: &'a mut dyn Write,
    prefix: &'a [u8],
    at_line_start: bool,
}

impl Write for Tagged<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = Vec::with_capacity(buf.len() + self.prefix.len());
        for piece in buf.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                out.extend_from_slice(self.prefix);
            }
            out.extend_from_slice(piece);
            self.at_line_start = piece.ends_with(b"\n");
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `held` to `w`, tagged when `tag` is given.
fn write_held(held: &mut Held, w: &mut dyn Write, tag: Option<&[u8]>) -> io::Result<()> {
    match tag {
        None => held.write_to(w),
        Some(prefix) => held.write_to(&mut Tagged {
            inner: w,
            prefix,
            at_line_start: true,
        }),
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
    /// With `-k`: the seqs skipped (`--resume`) past `next`, as runs `[start, end)` in order:
    /// a million skipped jobs are one run, not a million empty blocks.
    skipped: VecDeque<(u64, u64)>,
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
            skipped: VecDeque::new(),
            stdout_closed: false,
        }
    }

    /// Tells the `-k` buffer that job `seq` was handed out; the seqs between the previous one
    /// handed out and `seq` were skipped (`--resume`) and will never report. Called in
    /// increasing seq order, before that job's [`Output::finished`].
    pub(crate) fn expect_up_to(&mut self, seq: u64) {
        if self.keep_order && seq > self.handed_out + 1 {
            // Skipped seqs are remembered as one run, so the buffer never stalls on them.
            self.skipped.push_back((self.handed_out + 1, seq));
        }
        self.handed_out = self.handed_out.max(seq);
    }

    /// A job ended: keep its `--results` files and print its block (now, or once every job
    /// before it has been printed, with `-k`).
    pub(crate) fn finished(&mut self, job: &Job, stdout: Held, stderr: Held) -> io::Result<()> {
        let tag = job.tag.as_ref().map(|t| format!("{t}\t").into_bytes());
        let mut block = Block {
            stdout,
            stderr,
            tag,
        };
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
        loop {
            if let Some(&(start, end)) = self.skipped.front()
                && start <= self.next
            {
                self.next = self.next.max(end);
                self.skipped.pop_front();
                continue;
            }
            let Some(mut block) = self.waiting.remove(&self.next) else {
                return Ok(());
            };
            self.print(&mut block)?;
            self.next += 1;
        }
    }

    /// Prints whatever is still buffered, in order (the run stopped early).
    pub(crate) fn flush_rest(&mut self) -> io::Result<()> {
        self.skipped.clear();
        for (_, mut block) in std::mem::take(&mut self.waiting) {
            self.print(&mut block)?;
        }
        Ok(())
    }

    fn print(&mut self, block: &mut Block) -> io::Result<()> {
        if !block.stdout.is_empty() && !self.stdout_closed {
            let mut out = io::stdout().lock();
            match write_held(&mut block.stdout, &mut out, block.tag.as_deref())
                .and_then(|()| out.flush())
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self.stdout_closed = true,
                Err(e) => return Err(e),
            }
        }
        if !block.stderr.is_empty() {
            let mut err = io::stderr().lock();
            let _ = write_held(&mut block.stderr, &mut err, block.tag.as_deref());
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
