//! How a call's inputs become tasks: [`Chunker`] cuts an input iterator into encoded tasks
//! (plain data as bytes, see `chunk`), within the message size and descriptor limits.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{CodecError, Error, Result};

use super::chunk::Codec;
use super::sched::{Items, JobId, Task};
use super::transport::MAX_FDS;
use crate::fdpass::{self};

/// A task stops taking inputs once they brought this many descriptors (each input may bring up
/// to [`MAX_FDS`] minus this many more).
const FDS_PER_TASK: usize = 64;

/// Cuts an input iterator into encoded tasks of `chunksize` inputs (fewer when the inputs carry
/// shared-memory descriptors, see [`FDS_PER_TASK`]).
pub(crate) struct Chunker<I> {
    iter: I,
    chunksize: usize,
    limit: usize,
    /// Whether no caller code runs in `iter.next()` (the inputs of a `Vec`), so that one
    /// descriptor frame can serve a whole task.
    whole_frames: bool,
    /// Inputs taken from `iter` so far.
    pub(crate) pulled: usize,
    /// Whether `iter` is exhausted.
    pub(crate) done: bool,
    scratch: Vec<u8>,
    /// How the inputs are encoded (see `chunk`).
    codec: Codec,
}

impl<T: Serialize + DeserializeOwned> Chunker<std::vec::IntoIter<T>> {
    /// A chunker over the inputs of a `Vec`, encoding into `scratch` (a recycled buffer).
    pub(crate) fn from_vec(
        items: Vec<T>,
        chunksize: usize,
        limit: usize,
        scratch: Vec<u8>,
    ) -> Self {
        Chunker {
            whole_frames: true,
            ..Self::with_scratch(items.into_iter(), chunksize, limit, scratch)
        }
    }
}

impl<I: Iterator> Chunker<I>
where
    I::Item: Serialize + DeserializeOwned,
{
    /// A chunker over a caller's iterator.
    pub(crate) fn new(iter: I, chunksize: usize, limit: usize) -> Self {
        Self::with_scratch(iter, chunksize, limit, Vec::new())
    }

    fn with_scratch(iter: I, chunksize: usize, limit: usize, scratch: Vec<u8>) -> Self {
        Chunker {
            iter,
            chunksize: chunksize.max(1),
            limit,
            whole_frames: false,
            pulled: 0,
            done: false,
            scratch,
            codec: Codec::of::<I::Item>(),
        }
    }
}

impl<I: Iterator> Chunker<I>
where
    I::Item: Serialize,
{
    /// The next task of `job`, at most `max` inputs; `None` when the input is exhausted.
    pub(crate) fn next_task(&mut self, job: JobId, max: usize) -> Result<Option<Task>> {
        if self.done {
            return Ok(None);
        }
        self.scratch.clear();
        let first = self.pulled;
        let cap = self.chunksize.min(max.max(1));
        let mut n = 0usize;
        let mut fds = Vec::new();
        if let Codec::Fixed(size) = self.codec {
            n = self.fill_plain(cap, size)?;
        } else if self.whole_frames {
            // Each input is given up once encoded (it is dropped right after), so a `PodVec` in
            // shared memory goes as it is, without a copy. No caller code runs between the
            // inputs: one frame for the task.
            fdpass::encoding_into(&mut fds, true, || -> Result<()> {
                while n < cap {
                    let Some(x) = self.iter.next() else {
                        self.done = true;
                        break;
                    };
                    self.encode(x)?;
                    n += 1;
                    if self.task_full(fdpass::attached(), first + n - 1)? {
                        break;
                    }
                }
                Ok(())
            })?;
        } else {
            // The caller's iterator runs between the inputs: a frame for each, so that what
            // the iterator encodes cannot attach to the task.
            while n < cap {
                let Some(x) = self.iter.next() else {
                    self.done = true;
                    break;
                };
                fdpass::encoding_into(&mut fds, true, || self.encode(x))?;
                n += 1;
                if self.task_full(fds.len(), first + n - 1)? {
                    break;
                }
            }
        }
        self.pulled += n;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(Task {
            job,
            items: Items::Range(first, n as u32),
            bytes: if self.scratch.len() > 1 << 16 {
                Arc::new(std::mem::take(&mut self.scratch))
            } else {
                Arc::new(self.scratch.clone())
            },
            fds: (!fds.is_empty()).then(|| Arc::new(fds)),
            died: 0,
        }))
    }

    /// Appends the encoding of input `x` to the task being made, and drops `x`.
    #[inline]
    fn encode(&mut self, x: I::Item) -> Result<()> {
        self.codec
            .encode(&x, &mut self.scratch)
            .map_err(crate::fdpass::encode_error)?;
        Ok(())
    }

    /// Encodes up to `cap` plain-data inputs of `size` bytes (see `chunk`), which carry no
    /// descriptor: no descriptor frame, and the task's size is known before it is made.
    fn fill_plain(&mut self, cap: usize, size: usize) -> Result<usize> {
        let want = cap.min(self.iter.size_hint().0.max(1));
        if want.saturating_mul(size) > self.limit {
            self.done = true;
            return Err(Error::TooLarge {
                size: want.saturating_mul(size),
                limit: self.limit,
            });
        }
        self.scratch.reserve(want * size);
        let mut n = 0;
        while n < cap {
            let Some(x) = self.iter.next() else {
                self.done = true;
                break;
            };
            self.encode(x)?;
            n += 1;
        }
        if self.scratch.len() > self.limit {
            self.done = true;
            return Err(Error::TooLarge {
                size: self.scratch.len(),
                limit: self.limit,
            });
        }
        Ok(n)
    }

    /// Whether the task being made must take no more inputs, now that it holds input `#input`
    /// and `fds` descriptors; an error (which ends the input) when it is over a limit.
    #[inline]
    fn task_full(&mut self, fds: usize, input: usize) -> Result<bool> {
        if fds > MAX_FDS {
            return Err(self.too_many_fds(fds, input));
        }
        if self.scratch.len() > self.limit {
            self.done = true;
            return Err(Error::TooLarge {
                size: self.scratch.len(),
                limit: self.limit,
            });
        }
        // Close the task early, so that the next input cannot take it past the limit.
        Ok(fds >= FDS_PER_TASK)
    }

    /// The error of a task whose input `#input` brought its descriptors to `fds`.
    #[cold]
    fn too_many_fds(&mut self, fds: usize, input: usize) -> Error {
        self.done = true;
        Error::invalid_arg(
            "descriptors of one pool task",
            fds,
            format!(
                "input #{input} brings the task's shared-memory values (SharedArray, \
                 PodVec, sync objects) to more than {MAX_FDS}; pass fewer per input"
            ),
        )
    }
}

/// The inputs of a map-like call run from this thread (see `Pool::run`): kept as values, or,
/// for plain data (see `chunk`), already encoded into the bytes of their tasks.
#[derive(Debug)]
pub(crate) enum Inputs<T> {
    /// The inputs, cut and encoded as tasks are needed ([`Chunker`]).
    Values(Vec<T>),
    /// Plain-data inputs encoded straight from the caller's iterator into chunks.
    Plain(PlainChunks),
}

impl<T> Inputs<T> {
    /// How many inputs there are.
    pub(crate) fn len(&self) -> usize {
        match self {
            Inputs::Values(v) => v.len(),
            Inputs::Plain(p) => p.n,
        }
    }
}

/// The tasks of a job run from this thread.
pub(crate) enum Tasks<T> {
    Values(Chunker<std::vec::IntoIter<T>>),
    Plain(PlainChunks),
}

impl<T: Serialize + DeserializeOwned> Tasks<T> {
    /// The tasks of `inputs`, `chunksize` inputs each; `scratch` is a recycled encode buffer.
    pub(crate) fn new(inputs: Inputs<T>, chunksize: usize, limit: usize, scratch: Vec<u8>) -> Self {
        match inputs {
            Inputs::Values(v) => Tasks::Values(Chunker::from_vec(v, chunksize, limit, scratch)),
            Inputs::Plain(p) => Tasks::Plain(p),
        }
    }

    /// The next task of `job`; `None` when every input has been handed out.
    pub(crate) fn next_task(&mut self, job: JobId) -> Result<Option<Task>> {
        match self {
            Tasks::Values(c) => c.next_task(job, usize::MAX),
            Tasks::Plain(p) => Ok(p.next_task(job)),
        }
    }
}

/// Plain-data inputs (see `chunk`) encoded as they are taken from the caller's iterator: no
/// vector of the inputs is made.
#[derive(Debug)]
pub(crate) struct PlainChunks {
    chunks: Encoded,
    /// How many inputs in all.
    n: usize,
    /// The first input of the next task.
    next: usize,
}

/// The encoded inputs of a [`PlainChunks`].
#[derive(Debug)]
enum Encoded {
    /// Each task's bytes and input count, in input order: each chunk's buffer becomes its task's
    /// bytes as it is (one write of each input, no copy).
    Owned(VecDeque<(Vec<u8>, u32)>),
    /// Tiny chunks (at most [`TINY_CHUNK`] bytes): every input's bytes in one buffer, from which
    /// each task's are copied when it is dispatched. A buffer per chunk, made up front, cost an
    /// allocation and a queue entry per task before the first was sent: a chunksize-1 map of
    /// 200k `u64` made 200k of each, ~15 MB of heap that glibc kept after the map (and that the
    /// next `Fork` start had to give back and its workers found scattered).
    Packed {
        bytes: Vec<u8>,
        /// Bytes of one input.
        size: usize,
        /// Inputs per task.
        chunksize: usize,
    },
}

/// The largest chunk kept in one buffer with the others (see [`Encoded::Packed`]): copying it
/// at dispatch costs less than an allocation made at encode and held until then.
const TINY_CHUNK: usize = 256;

impl PlainChunks {
    /// Encodes every input of `iter` (plain data of `size` bytes) into chunks of `chunksize`;
    /// a chunk over `limit` bytes is [`Error::TooLarge`].
    pub(crate) fn encode<I: Iterator>(
        mut iter: I,
        size: usize,
        chunksize: usize,
        limit: usize,
    ) -> Result<PlainChunks>
    where
        I::Item: Serialize,
    {
        let codec = Codec::Fixed(size);
        let chunksize = chunksize.clamp(1, u32::MAX as usize);
        if chunksize.saturating_mul(size) > limit && iter.size_hint().0 >= chunksize {
            return Err(Error::TooLarge {
                size: chunksize.saturating_mul(size),
                limit,
            });
        }
        if chunksize.saturating_mul(size) <= TINY_CHUNK.min(limit) {
            let mut bytes = Vec::with_capacity(iter.size_hint().0.saturating_mul(size));
            let mut n = 0usize;
            for x in iter {
                codec.encode(&x, &mut bytes).map_err(CodecError)?;
                n += 1;
            }
            let chunks = Encoded::Packed {
                bytes,
                size,
                chunksize,
            };
            return Ok(PlainChunks { chunks, n, next: 0 });
        }
        let mut chunks = VecDeque::new();
        let mut n = 0usize;
        loop {
            let k = chunksize.min(iter.size_hint().0.max(1));
            let mut bytes = Vec::with_capacity(k.saturating_mul(size).min(limit));
            let mut count = 0usize;
            while count < chunksize {
                let Some(x) = iter.next() else { break };
                codec.encode(&x, &mut bytes).map_err(CodecError)?;
                count += 1;
            }
            if bytes.len() > limit {
                return Err(Error::TooLarge {
                    size: bytes.len(),
                    limit,
                });
            }
            if count == 0 {
                break;
            }
            chunks.push_back((bytes, count as u32));
            n += count;
            if count < chunksize {
                break;
            }
        }
        Ok(PlainChunks {
            chunks: Encoded::Owned(chunks),
            n,
            next: 0,
        })
    }

    fn next_task(&mut self, job: JobId) -> Option<Task> {
        let first = self.next;
        let (bytes, count) = match &mut self.chunks {
            Encoded::Owned(chunks) => {
                let (bytes, count) = chunks.pop_front()?;
                (bytes, count as usize)
            }
            Encoded::Packed {
                bytes,
                size,
                chunksize,
            } => {
                let count = (*chunksize).min(self.n - first);
                if count == 0 {
                    return None;
                }
                let at = first * *size;
                (bytes[at..at + count * *size].to_vec(), count)
            }
        };
        self.next += count;
        Some(Task {
            job,
            items: Items::Range(first, count as u32),
            bytes: Arc::new(bytes),
            fds: None,
            died: 0,
        })
    }
}
