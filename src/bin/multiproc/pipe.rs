//! `--pipe` and `--pipepart`: the input cut into blocks of about `--block` bytes, each ending at
//! a record boundary (after `--recend`, default newline, and before `--recstart`, default
//! anything), as GNU parallel cuts them. `--pipe` reads stdin (or `-a FILE`) and hands each
//! block to a job; `--pipepart` only finds the boundaries in a seekable file (a few small reads
//! around each multiple of the block size) and hands each job a byte range its worker copies.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::flags::PipeOpts;

/// The last record boundary `cut` in `buf[..limit]`: `buf[..cut]` ends with `recend` and
/// `buf[cut..limit]` starts with `recstart`.
fn last_boundary(buf: &[u8], opts: &PipeOpts, limit: usize) -> Option<usize> {
    let (start, end) = (&opts.recstart, &opts.recend);
    if start.is_empty() && end.len() == 1 {
        // The common case, fast: the last newline at or before the limit.
        return buf[..limit]
            .iter()
            .rposition(|&b| b == end[0])
            .map(|i| i + 1);
    }
    // As GNU parallel: the separator (recend then recstart) must lie within the block.
    (1..=limit.saturating_sub(start.len()))
        .rev()
        .find(|&cut| buf[..cut].ends_with(end) && buf[cut..limit].starts_with(start))
}

/// The blocks of a stream (`--pipe`).
#[derive(Debug)]
pub(crate) struct Blocks<R> {
    reader: R,
    opts: PipeOpts,
    buf: Vec<u8>,
    eof: bool,
}

impl<R: Read> Blocks<R> {
    /// Blocks of `reader`.
    pub(crate) fn new(reader: R, opts: PipeOpts) -> Self {
        Blocks {
            reader,
            opts,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Reads until the buffer holds at least `want` bytes or the input ends.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        while !self.eof && self.buf.len() < want {
            let old = self.buf.len();
            self.buf.resize(want.max(old + 65536), 0);
            match self.reader.read(&mut self.buf[old..]) {
                Ok(0) => {
                    self.buf.truncate(old);
                    self.eof = true;
                }
                Ok(n) => self.buf.truncate(old + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(old),
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Blocks<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let block = self.opts.block;
        let mut want = block;
        loop {
            if let Err(e) = self.fill(want) {
                return Some(Err(e));
            }
            if self.buf.is_empty() {
                return None;
            }
            if self.eof && self.buf.len() <= block {
                return Some(Ok(std::mem::take(&mut self.buf)));
            }
            // The last record boundary within the block: the block ends there.
            let limit = want.min(self.buf.len());
            if let Some(cut) = last_boundary(&self.buf, &self.opts, limit) {
                let rest = self.buf.split_off(cut);
                return Some(Ok(std::mem::replace(&mut self.buf, rest)));
            }
            if self.eof && want >= self.buf.len() {
                return Some(Ok(std::mem::take(&mut self.buf)));
            }
            // No boundary yet: a record longer than the block; read on.
            want += block;
        }
    }
}

/// `--pipepart`: the byte ranges `(start, len)` of `path`, each about `opts.block` bytes and
/// ending at a record boundary.
pub(crate) fn parts(path: &Path, opts: &PipeOpts) -> io::Result<Vec<(u64, u64)>> {
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut cuts = vec![0u64];
    let mut at = 0u64;
    while at < size {
        let target = at + opts.block as u64;
        if target >= size {
            break;
        }
        match next_boundary(&mut f, target, opts)? {
            Some(cut) if cut < size => {
                cuts.push(cut);
                at = cut;
            }
            _ => break,
        }
    }
    cuts.push(size);
    Ok(cuts
        .windows(2)
        .filter(|w| w[1] > w[0])
        .map(|w| (w[0], w[1] - w[0]))
        .collect())
}

/// The first record boundary at or after byte `from` of `f`.
fn next_boundary(f: &mut File, from: u64, opts: &PipeOpts) -> io::Result<Option<u64>> {
    let (start, end) = (&opts.recstart, &opts.recend);
    let back = end.len() as u64;
    let mut pos = from.saturating_sub(back);
    let mut buf = vec![0u8; 65536];
    loop {
        f.seek(SeekFrom::Start(pos))?;
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        let chunk = &buf[..n];
        let first = from.saturating_sub(pos) as usize;
        let hit = (first.max(end.len())..=n.saturating_sub(start.len()))
            .find(|&cut| chunk[..cut].ends_with(end) && chunk[cut..].starts_with(start));
        if let Some(cut) = hit {
            return Ok(Some(pos + cut as u64));
        }
        if n < buf.len() {
            return Ok(None);
        }
        pos += (n - end.len() - start.len()).max(1) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(block: usize, recstart: &str, recend: &str) -> PipeOpts {
        PipeOpts {
            part: false,
            block,
            recstart: recstart.as_bytes().to_vec(),
            recend: recend.as_bytes().to_vec(),
        }
    }

    fn blocks(text: &str, o: PipeOpts) -> Vec<String> {
        Blocks::new(text.as_bytes(), o)
            .map(|b| String::from_utf8(b.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn blocks_end_at_newlines() {
        let text = "aaa\nbb\ncccc\nd\n";
        let b = blocks(text, opts(5, "", "\n"));
        assert_eq!(b.concat(), text);
        assert!(b.iter().all(|x| x.ends_with('\n')), "{b:?}");
        assert!(b.len() >= 3, "{b:?}");
        // A record longer than the block is one block.
        assert_eq!(
            blocks("0123456789\nx\n", opts(4, "", "\n"))[0],
            "0123456789\n"
        );
        // No trailing newline: the last block is what is left.
        assert_eq!(blocks("a\nb", opts(1, "", "\n")).concat(), "a\nb");
    }

    #[test]
    fn recstart_and_recend() {
        let text = ">a\nxx\n>b\nyy\n>c\nzz\n";
        let b = blocks(text, opts(4, ">", "\n"));
        assert_eq!(b.concat(), text);
        assert!(b.iter().all(|x| x.starts_with('>')), "{b:?}");
    }

    #[test]
    fn parts_cover_the_file_at_boundaries() {
        let dir = std::env::temp_dir().join(format!("mp-parts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        let ranges = parts(&p, &opts(1000, "", "\n")).unwrap();
        assert!(ranges.len() > 5, "{ranges:?}");
        let mut at = 0;
        for &(start, len) in &ranges {
            assert_eq!(start, at);
            let piece = &text.as_bytes()[start as usize..(start + len) as usize];
            assert!(piece.ends_with(b"\n"), "{start}+{len}");
            at = start + len;
        }
        assert_eq!(at, text.len() as u64);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_longer_than_the_block_is_one_block() {
        let o = opts(8, "", "y\n");
        let b = blocks(">a\nx\n>b\ny\n>c\nz\n", o);
        assert_eq!(b, [">a\nx\n>b\ny\n", ">c\nz\n"]);
    }
}
