//! Where jobs come from: the inputs (streamed by a thread as jobs run, or counted first and
//! then read as jobs run, or with `--header`/`-X`/`-m`/`--shuf` read at once), shaped
//! ([`crate::shape`]), numbered, less what `--resume` skips, made into [`Job`]s.
//!
//! Nothing per job is kept: a regular file of 100,000 lines is read twice (once to count and
//! check it, once as jobs start), never held in memory.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::Failure;
use crate::args::{Config, Halt, Resume, Threshold};
use crate::engine::{JobSource, Next};
use crate::flags::{PipeOpts, Shape};
use crate::input::{self, InputSource};
use crate::job::{Job, Program};
use crate::joblog::JoblogState;
use crate::pipe;
use crate::quote;
use crate::shape;
use crate::streams::PipeInput;
use crate::template::JobValues;

/// Makes jobs from the config's templates and the inputs.
#[derive(Debug)]
pub(crate) struct Jobs<'a> {
    cfg: &'a Config,
    /// True when only `--stdin`/`--stdout` use the input: it is then not appended to the
    /// command (`--stdin {} ./mmul` runs `./mmul < in1`, not `./mmul in1 < in1`).
    no_append: bool,
}

impl<'a> Jobs<'a> {
    /// The job maker of `cfg` (also a multi-node agent's, for the jobs its runner sends).
    pub(crate) fn for_config(cfg: &'a Config) -> Self {
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

    /// Job `seq` with the input values `args` (one per input source), to run in `slot`.
    pub(crate) fn make(
        &self,
        seq: u64,
        slot: usize,
        args: Vec<String>,
        pipe: Option<PipeInput>,
    ) -> Job {
        let cfg = self.cfg;
        let full = JobValues {
            seq,
            slot,
            args: &args,
        };
        let cmd = JobValues {
            args: if self.no_append { &[] } else { &args },
            ..full
        };
        let stdin = cfg.stdin.as_ref().map(|t| t.render_single(&full));
        let stdout = cfg.stdout.as_ref().map(|t| t.render_single(&full));
        let program = if cfg.shell {
            Program::Shell(cfg.command.render_shell(&cmd))
        } else {
            Program::Argv(cfg.command.render_argv(&cmd))
        };
        let command_line = match &program {
            Program::Argv(words) => Some(words.as_slice()),
            Program::Shell(_) => None,
        };
        let shell_code = match &program {
            Program::Shell(code) => code.as_str(),
            Program::Argv(_) => "",
        };
        let command_line = quote::command_line(
            command_line,
            shell_code,
            stdin.as_deref(),
            stdout.as_deref(),
        );
        Job {
            seq,
            slot,
            tag: cfg.tag.as_ref().map(|t| t.render_single(&full)),
            wd: cfg.wd.as_ref().map(|t| t.render_single(&full)),
            pipe,
            program,
            command_line,
            stdin,
            stdout,
            env: vec![
                ("PARALLEL_SEQ".to_string(), seq.to_string()),
                ("PARALLEL_JOBSLOT".to_string(), slot.to_string()),
            ],
            args,
        }
    }
}

/// How many input combinations a streamed input may read ahead of the jobs.
const READ_AHEAD: usize = 1024;

/// What the reader thread needs to read streamed inputs.
#[derive(Debug, Clone)]
pub(crate) struct StreamSpec {
    sources: Vec<InputSource>,
    linked: Vec<bool>,
    shape: Shape,
    sep: u8,
    /// With `--resume*`: what the thread skips itself (numbering the inputs), so that a long
    /// run of done jobs costs no hand-off to the runner.
    skip: Option<(Arc<JoblogState>, Resume)>,
}

/// What the reader thread of a streamed input sends: an input with its seq, or why it stopped.
type Numbered = std::io::Result<(u64, Vec<String>)>;

/// The input combinations of a counted input, read as jobs start.
pub(crate) type Combos = Box<dyn Iterator<Item = std::io::Result<Vec<String>>>>;

/// The input combinations, in order.
pub(crate) enum Inputs {
    /// Read before the first job (with `--header`, `-X`, `-m`, `--shuf`, which need them all):
    /// a bad input is an error before any job starts, and the total is known.
    Read(std::vec::IntoIter<Vec<String>>),
    /// `:::` values and regular files: read through once before the first job (a bad input is
    /// an error before any job starts, and the total is known), then again as jobs start, so
    /// memory stays flat however many jobs there are.
    Counted {
        /// The combinations, read as jobs start.
        combos: Combos,
        /// How many there are.
        total: u64,
    },
    /// Stdin or a file that is not a regular one (a pipe, a terminal): read by a thread as jobs
    /// run, so jobs start as lines come and an endless input works. The thread starts with the
    /// first job asked for, after the runner has forked its workers.
    Streamed {
        /// What to read.
        spec: StreamSpec,
        /// The reader thread's channel (inputs with their seq), once started.
        rx: Option<Receiver<Numbered>>,
    },
    /// `--pipepart`: the byte ranges of the file, found before the first job.
    Parts(std::vec::IntoIter<PipeInput>),
    /// `--pipe`: blocks of stdin or a file, cut by a thread as jobs run (at most two ahead).
    Blocks {
        /// Where the blocks come from.
        source: InputSource,
        /// How to cut them.
        opts: PipeOpts,
        /// The reader thread's channel, once started.
        rx: Option<Receiver<std::io::Result<Vec<u8>>>>,
    },
}

/// What [`Inputs::next`] found.
enum Got {
    Input(Vec<String>, Option<PipeInput>),
    /// An input already numbered (and not skipped) by the reader thread.
    Numbered(u64, Vec<String>),
    NotYet,
    End(Result<(), String>),
}

impl Inputs {
    /// The next input combination, waiting until `deadline` for a streamed one.
    fn next(&mut self, deadline: Instant) -> Got {
        match self {
            Inputs::Read(it) => it.next().map_or(Got::End(Ok(())), |a| Got::Input(a, None)),
            Inputs::Counted { combos, .. } => match combos.next() {
                Some(Ok(args)) => Got::Input(args, None),
                Some(Err(e)) => Got::End(Err(format!("cannot read the inputs: {e}"))),
                None => Got::End(Ok(())),
            },
            Inputs::Parts(it) => it
                .next()
                .map_or(Got::End(Ok(())), |p| Got::Input(Vec::new(), Some(p))),
            Inputs::Blocks { source, opts, rx } => {
                if rx.is_none() {
                    match start_blocks(source.clone(), opts.clone()) {
                        Ok(r) => *rx = Some(r),
                        Err(e) => {
                            return Got::End(Err(format!("cannot start reading the input: {e}")));
                        }
                    }
                }
                match rx.as_ref().expect("started above").recv_deadline(deadline) {
                    Ok(Ok(block)) => Got::Input(Vec::new(), Some(PipeInput::Block(block))),
                    Ok(Err(e)) => Got::End(Err(format!("cannot read the input: {e}"))),
                    Err(RecvTimeoutError::Timeout) => Got::NotYet,
                    Err(RecvTimeoutError::Disconnected) => Got::End(Ok(())),
                }
            }
            Inputs::Streamed { spec, rx } => {
                if rx.is_none() {
                    match start_reader(spec.clone()) {
                        Ok(r) => *rx = Some(r),
                        Err(e) => {
                            return Got::End(Err(format!("cannot start reading the inputs: {e}")));
                        }
                    }
                }
                match rx.as_ref().expect("started above").recv_deadline(deadline) {
                    Ok(Ok((seq, args))) => Got::Numbered(seq, args),
                    Ok(Err(e)) => Got::End(Err(format!("cannot read the inputs: {e}"))),
                    Err(RecvTimeoutError::Timeout) => Got::NotYet,
                    Err(RecvTimeoutError::Disconnected) => Got::End(Ok(())),
                }
            }
        }
    }
}

/// Starts the thread that cuts `--pipe` blocks; it stops at the end of the input, at the first
/// error (which it sends), or when the runner stops taking blocks.
fn start_blocks(
    source: InputSource,
    opts: PipeOpts,
) -> std::io::Result<Receiver<std::io::Result<Vec<u8>>>> {
    let (tx, rx) = crossbeam_channel::bounded(2);
    std::thread::Builder::new()
        .name("multiproc-blocks".into())
        .spawn(move || {
            let reader: Box<dyn std::io::Read> = match &source {
                InputSource::File(p) => match File::open(p) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                },
                _ => Box::new(std::io::stdin().lock()),
            };
            for block in pipe::Blocks::new(reader, opts) {
                let failed = block.is_err();
                if tx.send(block).is_err() || failed {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// Starts the thread that reads streamed inputs; it stops at the end of the input, at the
/// first error (which it sends), or when the runner stops taking inputs.
fn start_reader(spec: StreamSpec) -> std::io::Result<Receiver<Numbered>> {
    let (tx, rx) = crossbeam_channel::bounded(READ_AHEAD);
    std::thread::Builder::new()
        .name("multiproc-input".into())
        .spawn(move || {
            match input::Combinations::new(&spec.sources, &spec.linked, spec.sep, false) {
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
                Ok(combos) => {
                    let skips = |seq| spec.skip.as_ref().is_some_and(|(s, r)| s.skips(seq, *r));
                    for (seq, item) in (1..).zip(shape::stream(combos, &spec.shape)) {
                        let item = match item {
                            Ok(_) if skips(seq) => continue,
                            Ok(args) => Ok((seq, args)),
                            Err(e) => Err(e),
                        };
                        let failed = item.is_err();
                        if tx.send(item).is_err() || failed {
                            break;
                        }
                    }
                }
            }
        })?;
    Ok(rx)
}

/// The runner's jobs: the input combinations numbered from 1, less those `--resume` skips.
pub(crate) struct Feed<'a> {
    jobs: Jobs<'a>,
    inputs: Inputs,
    /// The seq of the last input taken.
    seq: u64,
    state: Arc<JoblogState>,
    resume: Resume,
}

impl<'a> Feed<'a> {
    /// The jobs of `cfg` over `inputs`, less those the joblog `state` says to skip.
    pub(crate) fn new(cfg: &'a Config, mut inputs: Inputs, state: JoblogState) -> Self {
        let state = Arc::new(state);
        if let Inputs::Streamed { spec, .. } = &mut inputs
            && cfg.resume != Resume::No
        {
            spec.skip = Some((Arc::clone(&state), cfg.resume));
        }
        Feed {
            jobs: Jobs::for_config(cfg),
            inputs,
            seq: 0,
            resume: cfg.resume,
            state,
        }
    }

    /// Job `seq` with the input values `args`, to run in `slot` (a job that ran elsewhere, made
    /// again for the joblog and the output).
    pub(crate) fn make_job(&self, seq: u64, slot: usize, args: Vec<String>) -> Job {
        self.jobs.make(seq, slot, args, None)
    }

    /// With inputs counted or read at once: how many jobs there are, and how many will run.
    pub(crate) fn counts(&self) -> Option<(u64, u64)> {
        let total = match &self.inputs {
            Inputs::Read(it) => it.len() as u64,
            Inputs::Parts(it) => it.len() as u64,
            Inputs::Counted { total, .. } => *total,
            _ => return None,
        };
        Some((total, total - self.state.skipped_up_to(total, self.resume)))
    }
}

impl JobSource for Feed<'_> {
    fn next_job(&mut self, slot: usize, wait: Duration) -> Next {
        let deadline = Instant::now() + wait;
        loop {
            match self.inputs.next(deadline) {
                Got::Input(args, pipe) => {
                    self.seq += 1;
                    if !self.state.skips(self.seq, self.resume) {
                        return Next::Job(Box::new(self.jobs.make(self.seq, slot, args, pipe)));
                    }
                }
                Got::Numbered(seq, args) => {
                    self.seq = seq;
                    return Next::Job(Box::new(self.jobs.make(seq, slot, args, None)));
                }
                Got::NotYet => return Next::NotYet,
                Got::End(end) => return Next::End(end),
            }
        }
    }
}

/// Whether the first input source is read as jobs run (see [`Inputs::Streamed`]): stdin or a
/// file that is not a regular file, unless `--halt` needs the total for a percentage, or
/// `--header`, `-X`, `-m`, `--shuf` need the whole input.
fn streams(cfg: &Config) -> bool {
    if let Halt::When {
        threshold: Threshold::Percent(_),
        ..
    } = cfg.halt
    {
        return false;
    }
    let shape = &cfg.extras.shape;
    if shape.header || shape.multi.is_some() || shape.shuffle {
        return false;
    }
    let regular = match &cfg.sources[0] {
        InputSource::Args(_) => return false,
        InputSource::File(p) => std::fs::metadata(p).map(|m| m.is_file()),
        InputSource::Stdin => std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| File::from(fd).metadata())
            .map(|m| m.is_file()),
    };
    // A source that cannot be looked at is read at once, so that its error comes first.
    !regular.unwrap_or(true)
}

/// The inputs of the run, and with `--header` the column names: streamed (see [`streams`]),
/// counted then read as jobs start (see [`Inputs::Counted`]), or read at once, shaped, packed
/// over `slots` job slots (`-X`, `-m`) and shuffled (`--shuf`).
pub(crate) fn open_inputs(cfg: &Config, slots: usize) -> Result<(Inputs, Vec<String>), Failure> {
    let shape = &cfg.extras.shape;
    let sep = shape.sep;
    let spec = StreamSpec {
        sources: cfg.sources.clone(),
        linked: cfg.linked.clone(),
        shape: shape.clone(),
        sep,
        skip: None,
    };
    if let Some(opts) = &cfg.extras.pipe {
        let source = cfg.sources[0].clone();
        if !opts.part {
            let opts = opts.clone();
            return Ok((
                Inputs::Blocks {
                    source,
                    opts,
                    rx: None,
                },
                Vec::new(),
            ));
        }
        let InputSource::File(path) = &source else {
            return Err(Failure::usage("--pipepart needs a file: -a FILE"));
        };
        let ranges = pipe::parts(path, opts)
            .map_err(|e| Failure::usage(format!("--pipepart {}: {e}", path.display())))?;
        let path = path.display().to_string();
        let parts: Vec<PipeInput> = ranges
            .into_iter()
            .map(|(start, len)| PipeInput::Range {
                path: path.clone(),
                start,
                len,
            })
            .collect();
        return Ok((Inputs::Parts(parts.into_iter()), Vec::new()));
    }
    if streams(cfg) {
        return Ok((Inputs::Streamed { spec, rx: None }, Vec::new()));
    }
    let bad = |e: std::io::Error| Failure::usage(format!("cannot read the inputs: {e}"));
    if !shape.header && shape.multi.is_none() && !shape.shuffle {
        let shaped = |cfg: &Config| -> std::io::Result<Combos> {
            let combos = input::Combinations::new(&cfg.sources, &cfg.linked, sep, false)?;
            Ok(Box::new(shape::stream(combos, &cfg.extras.shape)))
        };
        if let Some(rewind) = StdinRewind::new(cfg).map_err(bad)? {
            let total = count_inputs(cfg, &rewind).map_err(bad)?;
            rewind.rewind().map_err(bad)?;
            let combos = shaped(cfg).map_err(bad)?;
            return Ok((Inputs::Counted { combos, total }, Vec::new()));
        }
    }
    let mut combos =
        input::Combinations::new(&cfg.sources, &cfg.linked, sep, shape.header).map_err(bad)?;
    let names = shape::columns(std::mem::take(&mut combos.header), shape.colsep.as_ref());
    let mut inputs = shape::stream(combos, shape)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(bad)?;
    if shape.multi.is_some() {
        inputs = shape::pack(inputs, slots);
    }
    if shape.shuffle {
        shape::shuffle(&mut inputs);
    }
    Ok((Inputs::Read(inputs.into_iter()), names))
}

/// How many jobs the inputs make (`-N` applied), without keeping them; a bad input is an error.
fn count_inputs(cfg: &Config, rewind: &StdinRewind) -> std::io::Result<u64> {
    let shape = &cfg.extras.shape;
    let per_job = shape.per_job.map_or(1, |n| n.get()) as u64;
    if let [source] = cfg.sources.as_slice() {
        // One source: count its separators (fast); else (a line not UTF-8) read it as jobs do.
        let values = input::count_values(source, shape.sep);
        rewind.rewind()?;
        if let Some(values) = values? {
            return Ok(values.div_ceil(per_job));
        }
    }
    let mut total = 0u64;
    let combos = input::Combinations::new(&cfg.sources, &cfg.linked, shape.sep, false)?;
    for item in shape::stream(combos, shape) {
        item?;
        total += 1;
    }
    Ok(total)
}

/// How to read the inputs a second time: stdin (when a source) goes back to where it was.
struct StdinRewind {
    /// Stdin's offset before the first read, if stdin is a source.
    offset: Option<i64>,
}

impl StdinRewind {
    /// `None` when the inputs cannot be read twice: a file source is not a regular file (a
    /// FIFO, `<(cmd)`), or stdin is a source and is not a regular file (a pipe that is not the
    /// first source; a first one is streamed, see [`streams`]). They are then read at once.
    fn new(cfg: &Config) -> std::io::Result<Option<StdinRewind>> {
        let regular = |s: &InputSource| match s {
            InputSource::Args(_) => true,
            InputSource::File(p) => std::fs::metadata(p).is_ok_and(|m| m.is_file()),
            InputSource::Stdin => std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .and_then(|fd| File::from(fd).metadata())
                .is_ok_and(|m| m.is_file()),
        };
        if !cfg.sources.iter().all(regular) {
            return Ok(None);
        }
        if !cfg.sources.iter().any(|s| matches!(s, InputSource::Stdin)) {
            return Ok(Some(StdinRewind { offset: None }));
        }
        match nix::unistd::lseek(std::io::stdin(), 0, nix::unistd::Whence::SeekCur) {
            Ok(offset) => Ok(Some(StdinRewind {
                offset: Some(offset),
            })),
            Err(nix::errno::Errno::ESPIPE) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Puts stdin back where it was before the first read.
    fn rewind(&self) -> std::io::Result<()> {
        if let Some(offset) = self.offset {
            nix::unistd::lseek(std::io::stdin(), offset, nix::unistd::Whence::SeekSet)?;
        }
        Ok(())
    }
}
