//! [`Queue`]: a multi-producer, multi-consumer queue shared by forked processes.
//!
//! Items travel as bytes through a ring in a shared mapping (see `ring`). Descriptors cannot go
//! through shared memory, so each queue also has a side channel: a unix `SOCK_SEQPACKET` socket
//! pair made by [`Queue::new`], whose two ends every holder inherits by fork (a `Queue` cannot be
//! sent to an unrelated process: it is not `Serialize`). `put` encodes with a descriptor table
//! ([`crate::fdpass`]); when parts of the item attached descriptors (a big
//! [`PodVec`](crate::PodVec), a [`SharedArray`](crate::SharedArray), a sync primitive), the
//! producer, holding the put lock, numbers the item, sends the number and the descriptors as one
//! message on the side channel, then writes the item's records marked with that number; the
//! consumer holding the get lock takes the matching message. Items without descriptors take the
//! ring alone, as before.

mod ring;

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::liveness::HasHolders;
use crate::{fdpass, wire};

pub(crate) use ring::Shared;
use ring::{PutItem, TAG_BYTES, Taken};

/// The default ring size of a queue, in bytes.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1 << 20;

thread_local! {
    static ENCODE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A queue shared by processes: Python's `multiprocessing.Queue`.
///
/// Make it before the processes start; every process forked afterwards (by [`Process`],
/// [`spawn`] or a pool) holds it too. Clone it freely: clones are the same queue.
///
/// - **Multi-producer, multi-consumer**: any number of processes (and threads) put and get at
///   once. Each item goes to exactly one consumer, whole: items of concurrent producers never
///   interleave, and items of one producer come out in the order it put them.
/// - **Any size**: items from 0 bytes up to
///   [`MAX_MESSAGE_BYTES`](crate::MAX_MESSAGE_BYTES) encoded. Items travel through a ring of
///   [`DEFAULT_QUEUE_CAPACITY`] bytes (see [`with_capacity`](Queue::with_capacity)); an item larger
///   than a quarter of the ring streams through it, so `put` of a big item returns once a consumer
///   has taken most of it.
/// - **Shared memory by descriptor**: a big [`PodVec`](crate::PodVec) (over 256 KiB), a
///   [`SharedArray`](crate::SharedArray) or a sync primitive in an item travels as its memory
///   file's descriptor, on a side channel (a unix socket pair every holder inherits), not
///   through the ring: an 80 MB `PodVec` costs one copy into shared memory (none with
///   [`put_owned`](Queue::put_owned) of a received one), and the consumer maps it. Arrays made
///   after the consumer forked resolve too. An item carries at most 253 descriptors. The kernel
///   keeps descriptors in flight alive, even after the producer has exited.
/// - **Bounded**: `put` blocks while the ring is full (or while the side channel's socket buffer
///   is, with descriptors in flight).
/// - **Poison pills**: [`put_pill`](Queue::put_pill) puts a typed stop marker (never a magic
///   value); [`iter`](Queue::iter) ends at the first pill it takes.
/// - **No endless wait**: a `get` on an empty queue returns [`Error::Disconnected`] once no
///   process that holds the queue can put any more: every one of them has ended, dropped the
///   queue, or is itself waiting in `get`, or is joining a child that is in one of these states.
///   Likewise a `put` on a full queue when nobody can get. The check runs every 50 ms while
///   waiting.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, Queue};
///
/// let jobs: Queue<String> = Queue::new()?;
/// let results: Queue<usize> = Queue::new()?;
/// let workers: Vec<Process> = (0..2)
///     .map(|_| {
///         let (jobs, results) = (jobs.clone(), results.clone());
///         Process::new(move || {
///             for job in jobs.iter() {
///                 results.put(&job.len()).unwrap();
///             }
///         })
///     })
///     .collect();
/// for w in &workers {
///     w.start()?;
/// }
/// for name in ["a", "bb", "ccc"] {
///     jobs.put(&name.to_string())?;
/// }
/// for _ in &workers {
///     jobs.put_pill()?;
/// }
/// let mut lens: Vec<usize> = (0..3).map(|_| results.get()).collect::<Result<_, _>>()?;
/// lens.sort();
/// assert_eq!(lens, [1, 2, 3]);
/// for w in &workers {
///     w.join()?;
/// }
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Caveats
///
/// Disconnection is detected only among processes forked through multiproc (a raw `libc::fork`
/// is not seen), and not for a process that uses the queue from several threads (it always
/// counts as able to put). A consumer killed while taking an item loses that item: it was
/// delivered to the process that died. A process killed in the middle of putting a large item
/// leaves no trace of it: consumers drop the partial item (and the descriptors it had sent on the
/// side channel).
///
/// [`Process`]: crate::Process
/// [`spawn`]: crate::spawn
pub struct Queue<T> {
    shared: Arc<Shared>,
    _items: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            shared: Arc::clone(&self.shared),
            _items: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        // The last handle in this process: it can no longer put or get.
        if Arc::strong_count(&self.shared) == 1 {
            self.shared.holders().unregister_self();
        }
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue with a ring of [`DEFAULT_QUEUE_CAPACITY`] bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the shared mapping cannot be made.
    pub fn new() -> Result<Self> {
        Self::with_capacity(DEFAULT_QUEUE_CAPACITY)
    }

    /// A queue whose ring holds `bytes` bytes (at least 4 KiB, at most 1 GiB; rounded up to a
    /// multiple of 4 KiB). Each item takes its encoded size plus 16 bytes (24 if it has descriptors).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] outside those bounds; [`Error::Io`] if the mapping fails.
    pub fn with_capacity(bytes: usize) -> Result<Self> {
        const MIN: usize = 4096;
        const MAX: usize = 1 << 30;
        if !(MIN..=MAX).contains(&bytes) {
            return Err(Error::invalid_arg(
                "capacity",
                bytes,
                format!("a queue's ring must hold between {MIN} and {MAX} bytes"),
            ));
        }
        let shared = Arc::new(Shared::new(bytes.next_multiple_of(4096))?);
        crate::liveness::adopt(&shared);
        Ok(Queue {
            shared,
            _items: PhantomData,
        })
    }

    /// Puts an item, blocking while the ring is full.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] above [`MAX_MESSAGE_BYTES`](crate::MAX_MESSAGE_BYTES);
    /// [`Error::Codec`] if the item cannot be encoded; [`Error::InvalidArgument`] if it holds more
    /// than 253 shared objects that travel by descriptor; [`Error::Disconnected`] if the ring (or
    /// the side channel) is full and no process can take from it any more.
    pub fn put(&self, item: &T) -> Result<()> {
        self.put_with(item, false)
    }

    /// Puts an item and gives it up. The same as [`put`](Queue::put), except that a
    /// [`PodVec`](crate::PodVec) in it that was itself received (so lives in shared memory this
    /// process holds alone) is forwarded as is, without a copy: a worker that gets a big vector,
    /// works on it in place and puts it back copies nothing. The analog of
    /// [`Connection::send_owned`](crate::Connection::send_owned).
    ///
    /// # Errors
    ///
    /// As for [`put`](Queue::put).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{PodVec, Queue};
    ///
    /// let q: Queue<PodVec<f64>> = Queue::new()?;
    /// q.put_owned(vec![1.0; 1 << 20].into())?; // one copy, into shared memory
    /// let mut v = q.get()?; // mapped, no copy
    /// v[0] = 2.0;
    /// q.put_owned(v)?; // forwarded, no copy
    /// assert_eq!(q.get()?[0], 2.0);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn put_owned(&self, item: T) -> Result<()> {
        let r = self.put_with(&item, true);
        drop(item);
        r
    }

    fn put_with(&self, item: &T, moving: bool) -> Result<()> {
        ENCODE_BUF.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => {
                let r = self.put_encoded(item, moving, &mut buf);
                if buf.capacity() > 4 << 20 {
                    *buf = Vec::new();
                }
                r
            }
            // Re-entered from inside an item's Serialize impl: use a fresh buffer.
            Err(_) => self.put_encoded(item, moving, &mut Vec::new()),
        })
    }

    /// Encodes `item` into `buf` behind room for its tag, then puts it: with its descriptors
    /// on the side channel if parts of it attached any.
    fn put_encoded(&self, item: &T, moving: bool, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        buf.extend_from_slice(&[0; TAG_BYTES]);
        let fds = if moving {
            fdpass::encode_append_moving_with_fds(item, buf)?
        } else {
            fdpass::encode_append_with_fds(item, buf)?
        };
        if fds.is_empty() {
            self.shared.put(PutItem::Bytes(&buf[TAG_BYTES..]))
        } else {
            self.shared.put(PutItem::WithFds(buf, &fds))
        }
        // `fds` (our duplicates) close here; the side channel holds its own until taken.
    }

    /// Puts a poison pill: the consumer that takes it stops ([`iter`](Queue::iter) ends, `get`
    /// returns [`Error::Stopped`]). Put one per consumer.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] if the ring is full and no process can take from it any more.
    pub fn put_pill(&self) -> Result<()> {
        self.shared.put(PutItem::Pill)
    }

    /// Takes the next item, waiting as long as some process could still put one.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] when it took a pill; [`Error::Disconnected`] when the queue is empty
    /// and nobody can put any more; [`Error::Codec`] if the bytes do not decode as a `T`;
    /// [`Error::InvalidState`] if the item's descriptors are missing from the side channel (the
    /// item is then skipped, the next `get` goes on with the next one).
    pub fn get(&self) -> Result<T> {
        self.take(None)
    }

    /// As [`get`](Queue::get), waiting at most `timeout` for an item to begin arriving (a large
    /// item that has begun to arrive is received whole).
    ///
    /// # Errors
    ///
    /// As [`get`](Queue::get), plus [`Error::Timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.take(Some(Instant::now() + timeout))
    }

    /// Takes an item if one is there now.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] (with a zero duration) when the queue is empty; otherwise as
    /// [`get`](Queue::get).
    pub fn try_get(&self) -> Result<T> {
        self.take(Some(Instant::now()))
    }

    fn take(&self, deadline: Option<Instant>) -> Result<T> {
        match self.shared.get(deadline)? {
            Taken::Item(bytes, fds) => decode(&bytes, fds),
            Taken::Pill => Err(Error::Stopped),
        }
    }

    /// Whether the queue is empty right now (another process may change that at once).
    pub fn is_empty(&self) -> bool {
        self.shared.is_empty()
    }

    /// An iterator that takes items until the first pill, or until the queue is disconnected
    /// (see [`QueueIter::stop_reason`]): the worker loop `for job in queue.iter() { .. }`.
    pub fn iter(&self) -> QueueIter<'_, T> {
        QueueIter {
            queue: self,
            sentinel: None,
            stop: None,
        }
    }

    /// An iterator that takes items until one equal to `sentinel` (Python's
    /// `iter(queue.get, "STOP")`), a pill, or disconnection. Equality is of the encoded bytes,
    /// which for the usual types (numbers, strings, enums) is value equality.
    pub fn iter_until(&self, sentinel: &T) -> QueueIter<'_, T> {
        let (sentinel, stop) = match wire::encode(sentinel) {
            Ok(bytes) => (Some(bytes), None),
            Err(e) => (None, Some(e)),
        };
        QueueIter {
            queue: self,
            sentinel,
            stop,
        }
    }
}

/// Decodes an item, handing its parts the descriptors that came with it.
fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<std::os::fd::OwnedFd>) -> Result<T> {
    if fds.is_empty() {
        wire::decode(bytes)
    } else {
        fdpass::decode_with_fds(bytes, fds)
    }
}

/// The iterator of [`Queue::iter`] and [`Queue::iter_until`].
pub struct QueueIter<'a, T> {
    queue: &'a Queue<T>,
    sentinel: Option<Vec<u8>>,
    stop: Option<Error>,
}

impl<T> fmt::Debug for QueueIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueIter")
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl<T> QueueIter<'_, T> {
    /// Why the iterator ended: [`Error::Stopped`] for a pill or the sentinel,
    /// [`Error::Disconnected`], or another error; `None` while it has not ended.
    pub fn stop_reason(&self) -> Option<&Error> {
        self.stop.as_ref()
    }
}

impl<T: Serialize + DeserializeOwned> Iterator for QueueIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.stop.is_some() {
            return None;
        }
        let taken = self.queue.shared.get(None).and_then(|taken| match taken {
            Taken::Item(bytes, _) if self.sentinel.as_ref() == Some(&bytes) => Err(Error::Stopped),
            Taken::Item(bytes, fds) => decode(&bytes, fds),
            Taken::Pill => Err(Error::Stopped),
        });
        match taken {
            Ok(item) => Some(item),
            Err(e) => {
                self.stop = Some(e);
                None
            }
        }
    }
}

/// A [`Queue`] whose consumers confirm each item: Python's `multiprocessing.JoinableQueue`.
///
/// Every item put counts as unfinished until some process calls
/// [`task_done`](JoinableQueue::task_done) for it; [`join`](JoinableQueue::join) waits until none
/// is. Pills are not counted.
///
/// # Examples
///
/// ```
/// use multiproc::{JoinableQueue, Process};
///
/// let q: JoinableQueue<u32> = JoinableQueue::new()?;
/// let worker = {
///     let q = q.clone();
///     Process::new(move || {
///         for _item in q.iter() {
///             q.task_done().unwrap();
///         }
///     })
/// };
/// worker.start()?;
/// for i in 0..10 {
///     q.put(&i)?;
/// }
/// q.join()?; // all ten were processed
/// q.put_pill()?;
/// worker.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue").finish_non_exhaustive()
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// A joinable queue with a ring of [`DEFAULT_QUEUE_CAPACITY`] bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the shared mapping cannot be made.
    pub fn new() -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::new()?,
        })
    }

    /// Marks one item as processed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if called more times than items were put.
    pub fn task_done(&self) -> Result<()> {
        self.queue.shared.task_done()
    }

    /// Items put and not yet marked done.
    pub fn unfinished(&self) -> u64 {
        self.queue.shared.unfinished()
    }

    /// Waits until every item put has been marked done.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for detecting dead consumers.
    pub fn join(&self) -> Result<()> {
        self.queue.shared.join_tasks(None)
    }

    /// As [`join`](JoinableQueue::join), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when items are still unfinished after `timeout`.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.queue.shared.join_tasks(Some(Instant::now() + timeout))
    }
}
