//! Input sources (`::: ARGS`, `:::: FILE`, `-a FILE`, stdin) and how they combine into jobs.
//!
//! As in GNU parallel: each `-a FILE`, each file after `::::` and each `:::` group is one input
//! source; `-a` sources come first, then the others in command-line order; with none, stdin is
//! the only source. A file (or stdin, written `-`) gives one value per line: lines end at `\n`,
//! which is removed (a `\r` is kept), an empty line is an empty value, and a last line without
//! `\n` still counts. Several sources combine as a cartesian product, the last source varying
//! fastest (`::: a b ::: c d` gives `a c`, `a d`, `b c`, `b d`).
//!
//! The first source is streamed (stdin may be endless); the others are read into memory (they
//! are combined with every value of the first).

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsFd;
use std::path::PathBuf;

/// Where input values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InputSource {
    /// Values given on the command line after `:::`.
    Args(Vec<String>),
    /// A file of lines (`-a FILE`, `:::: FILE`).
    File(PathBuf),
    /// Standard input, one value per line (no source given, or `-a -`, `:::: -`).
    Stdin,
}

impl fmt::Display for InputSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputSource::Args(a) => write!(f, "::: ({} values)", a.len()),
            InputSource::File(p) => write!(f, "{}", p.display()),
            InputSource::Stdin => f.write_str("stdin"),
        }
    }
}

/// An iterator of values, each possibly an I/O error.
pub(crate) type Values = Box<dyn Iterator<Item = io::Result<String>>>;

impl InputSource {
    /// Opens the source as an iterator of values, each ended by `sep` (`\n`, or NUL for `-0`).
    ///
    /// # Errors
    /// The file cannot be opened.
    pub(crate) fn open(&self, sep: u8) -> io::Result<Values> {
        Ok(match self {
            InputSource::Args(a) => Box::new(a.clone().into_iter().map(Ok)),
            InputSource::File(p) => {
                let name = p.display().to_string();
                Box::new(Lines::new(BufReader::new(File::open(p)?), name).sep(sep))
            }
            InputSource::Stdin => {
                Box::new(Lines::new(io::stdin().lock(), "stdin".to_owned()).sep(sep))
            }
        })
    }
}

/// The lines of a reader, GNU parallel style (see the module docs). Non-UTF-8 lines are an
/// error naming the source and line number.
/// How many values a file or stdin gives (as [`Lines`] would), read in 1 MiB blocks and kept
/// nowhere: the separators counted, the lines checked to be UTF-8. `None` when that does not
/// answer it: `:::` values, a separator that is not ASCII, or a line that is not UTF-8 (let
/// [`Lines`] name it).
pub(crate) fn count_values(source: &InputSource, sep: u8) -> io::Result<Option<u64>> {
    if !sep.is_ascii() {
        return Ok(None);
    }
    match source {
        InputSource::Args(_) => Ok(None),
        InputSource::File(p) => count_lines(BufReader::with_capacity(1 << 20, File::open(p)?), sep),
        // Through a duplicate of fd 0 (same offset, which the caller puts back), so that the
        // buffer of `io::stdin()` never holds what was read here.
        InputSource::Stdin => {
            let fd = io::stdin().as_fd().try_clone_to_owned()?;
            count_lines(BufReader::with_capacity(1 << 20, File::from(fd)), sep)
        }
    }
}

fn count_lines(mut r: impl BufRead, sep: u8) -> io::Result<Option<u64>> {
    // An ASCII separator never cuts a UTF-8 sequence: whole lines are UTF-8 if all of them are.
    let mut partial: Vec<u8> = Vec::new();
    let mut n = 0u64;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        let len = buf.len();
        if let Some(last) = buf.iter().rposition(|&b| b == sep) {
            let whole = &buf[..=last];
            n += whole.iter().filter(|&&b| b == sep).count() as u64;
            partial.extend_from_slice(whole);
            if std::str::from_utf8(&partial).is_err() {
                return Ok(None);
            }
            partial.clear();
            partial.extend_from_slice(&buf[last + 1..]);
        } else {
            partial.extend_from_slice(buf);
        }
        r.consume(len);
    }
    if !partial.is_empty() {
        if std::str::from_utf8(&partial).is_err() {
            return Ok(None);
        }
        n += 1;
    }
    Ok(Some(n))
}

#[derive(Debug)]
pub(crate) struct Lines<R> {
    reader: R,
    name: String,
    line: u64,
    done: bool,
    sep: u8,
}

impl<R: BufRead> Lines<R> {
    /// Wraps a reader; `name` is used in error messages.
    pub(crate) fn new(reader: R, name: String) -> Self {
        Lines {
            reader,
            name,
            line: 0,
            done: false,
            sep: b'\n',
        }
    }

    /// Values end at `sep` instead of `\n` (`-0`: NUL).
    pub(crate) fn sep(mut self, sep: u8) -> Self {
        self.sep = sep;
        self
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = io::Result<String>;

    fn next(&mut self) -> Option<io::Result<String>> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        match self.reader.read_until(self.sep, &mut buf) {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) => {
                self.line += 1;
                if buf.last() == Some(&self.sep) {
                    buf.pop();
                }
                Some(String::from_utf8(buf).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} line {}: not valid UTF-8", self.name, self.line),
                    )
                }))
            }
            Err(e) => {
                self.done = true;
                Some(Err(io::Error::new(
                    e.kind(),
                    format!("reading {}: {e}", self.name),
                )))
            }
        }
    }
}

/// The combinations of the sources: one `Vec<String>` (one value per source) per job. Sources
/// linked to the one before (`:::+`) form one dimension with it, read in step (and ending with
/// the shortest, as GNU parallel 20221122 does); the dimensions combine as a cartesian product,
/// the last varying fastest.
pub(crate) struct Combinations {
    first: Values,
    /// Sources linked to the first one (read into memory).
    first_linked: Vec<Vec<String>>,
    /// The other dimensions: each a list of rows (its sources' values in step).
    dims: Vec<Vec<Vec<String>>>,
    current: Option<Vec<String>>,
    /// How many rows of the first dimension were read.
    row: usize,
    odometer: Vec<usize>,
    /// With `--header`: each source's first value.
    pub(crate) header: Vec<String>,
}

impl fmt::Debug for Combinations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Combinations")
            .field("dims", &self.dims)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl Combinations {
    /// Opens every source; all but the first are read to the end now. `linked[i]`: source `i`
    /// is linked to source `i - 1`. `sep` ends values in files; with `header`, each source's
    /// first value is its header, not an input.
    ///
    /// # Errors
    /// A source cannot be opened or read.
    ///
    /// # Panics
    /// If `sources` is empty (a `Config` always has at least one source).
    pub(crate) fn new(
        sources: &[InputSource],
        linked: &[bool],
        sep: u8,
        header: bool,
    ) -> io::Result<Self> {
        let (first, rest) = sources.split_first().expect("at least one input source");
        let mut first = first.open(sep)?;
        let mut heads = Vec::new();
        if header {
            heads.push(first.next().transpose()?.unwrap_or_default());
        }
        let mut first_linked = Vec::new();
        let mut dims: Vec<Vec<Vec<String>>> = Vec::new();
        for (i, s) in rest.iter().enumerate() {
            let mut values = s.open(sep)?.collect::<io::Result<Vec<_>>>()?;
            if header {
                heads.push(if values.is_empty() {
                    String::new()
                } else {
                    values.remove(0)
                });
            }
            let link = linked.get(i + 1).copied().unwrap_or(false);
            let no_dims = dims.is_empty();
            match dims.last_mut() {
                _ if link && no_dims => first_linked.push(values),
                Some(rows) if link => {
                    rows.truncate(values.len());
                    for (row, v) in rows.iter_mut().zip(values) {
                        row.push(v);
                    }
                }
                _ => dims.push(values.into_iter().map(|v| vec![v]).collect()),
            }
        }
        Ok(Combinations {
            first,
            first_linked,
            odometer: vec![0; dims.len()],
            dims,
            current: None,
            row: 0,
            header: heads,
        })
    }

    /// Advances the odometer over the other dimensions; false when it wrapped around.
    fn advance(&mut self) -> bool {
        for i in (0..self.dims.len()).rev() {
            self.odometer[i] += 1;
            if self.odometer[i] < self.dims[i].len() {
                return true;
            }
            self.odometer[i] = 0;
        }
        false
    }

    /// The next row of the first dimension, or `None` at its end.
    fn next_row(&mut self) -> Option<io::Result<Vec<String>>> {
        if self.first_linked.iter().any(|v| v.len() <= self.row) {
            return None;
        }
        let value = match self.first.next()? {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        let mut row = vec![value];
        row.extend(self.first_linked.iter().map(|v| v[self.row].clone()));
        self.row += 1;
        Some(Ok(row))
    }
}

impl Iterator for Combinations {
    type Item = io::Result<Vec<String>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.dims.iter().any(Vec::is_empty) {
            return None;
        }
        if self.dims.is_empty() {
            // No product: each row is a job as it is (no copy).
            return self.next_row();
        }
        if self.current.is_none() || !self.advance() {
            match self.next_row()? {
                Ok(row) => self.current = Some(row),
                Err(e) => return Some(Err(e)),
            }
        }
        let mut job = self.current.clone().unwrap_or_default();
        for (rows, &i) in self.dims.iter().zip(&self.odometer) {
            job.extend(rows[i].iter().cloned());
        }
        Some(Ok(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> InputSource {
        InputSource::Args(v.iter().map(|s| s.to_string()).collect())
    }

    fn all(sources: &[InputSource]) -> Vec<Vec<String>> {
        Combinations::new(sources, &[], b'\n', false)
            .unwrap()
            .collect::<io::Result<_>>()
            .unwrap()
    }

    #[test]
    fn lines_like_gnu_parallel() {
        let lines: Vec<String> = Lines::new(&b"a\n\nb\r\nlast"[..], "t".into())
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(lines, ["a", "", "b\r", "last"]);
        assert_eq!(Lines::new(&b""[..], "t".into()).count(), 0);
        assert_eq!(Lines::new(&b"\n"[..], "t".into()).count(), 1);
    }

    #[test]
    fn non_utf8_line_is_an_error_with_its_number() {
        let mut it = Lines::new(&b"ok\n\xff\n"[..], "in.txt".into());
        assert_eq!(it.next().unwrap().unwrap(), "ok");
        let err = it.next().unwrap().unwrap_err();
        assert_eq!(err.to_string(), "in.txt line 2: not valid UTF-8");
    }

    #[test]
    fn one_source() {
        assert_eq!(all(&[args(&["x", "y"])]), [["x"], ["y"]]);
    }

    #[test]
    fn cartesian_product_last_varies_fastest() {
        assert_eq!(
            all(&[args(&["a", "b"]), args(&["c", "d"])]),
            [["a", "c"], ["a", "d"], ["b", "c"], ["b", "d"]]
        );
        let three = all(&[args(&["1", "2"]), args(&["x"]), args(&["p", "q", "r"])]);
        assert_eq!(three.len(), 6);
        assert_eq!(three[2], ["1", "x", "r"]);
        assert_eq!(three[3], ["2", "x", "p"]);
    }

    #[test]
    fn an_empty_source_gives_no_jobs() {
        assert!(all(&[args(&["a"]), args(&[])]).is_empty());
        assert!(all(&[args(&[]), args(&["a"])]).is_empty());
    }

    #[test]
    fn file_source() {
        let dir = std::env::temp_dir().join(format!("multiproc-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("in.txt");
        std::fs::write(&f, "f1\nf2\n").unwrap();
        // GNU: `parallel -a f echo ::: x y` gives "f1 x", "f1 y", "f2 x", "f2 y".
        assert_eq!(
            all(&[InputSource::File(f.clone()), args(&["x", "y"])]),
            [["f1", "x"], ["f1", "y"], ["f2", "x"], ["f2", "y"]]
        );
        let missing = InputSource::File(dir.join("nope"));
        assert_eq!(
            Combinations::new(&[missing], &[], b'\n', false)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
