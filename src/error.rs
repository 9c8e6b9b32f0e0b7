//! The crate's one error type, [`Error`], and its [`Result`] alias.

use std::fmt;
use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A `Result` whose error is [`multiproc::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A panic that happened in another process, carried back as data.
///
/// The child's panic hook records the message and the source location; the parent gets them in
/// [`Error::TaskPanicked`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePanic {
    /// The panic message (`"boom"` for `panic!("boom")`); `"Box<dyn Any>"` when the payload was not
    /// a string.
    pub message: String,
    /// `file:line:column` of the `panic!`, when known.
    pub location: Option<String>,
}

impl fmt::Display for RemotePanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "'{}' at {loc}", self.message),
            None => write!(f, "'{}'", self.message),
        }
    }
}

/// An encoding or decoding failure of the wire format.
///
/// The codec's own error type is kept out of the public API; its message is kept.
#[derive(Debug)]
pub struct CodecError(pub(crate) postcard::Error);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for CodecError {}

/// Everything that can go wrong in multiproc.
///
/// The enum is `#[non_exhaustive]`: match the kinds you handle and keep a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task's code panicked in the worker process; the panic travelled back as data.
    #[error("task panicked in process {pid}: {panic}")]
    TaskPanicked {
        /// The process the panic happened in.
        pid: i32,
        /// The panic's message and location.
        panic: RemotePanic,
    },

    /// A worker process ended before it answered: killed by a signal, or exited on its own.
    #[error("{}", worker_died_message(*pid, *signal, *code, task.as_deref()))]
    WorkerDied {
        /// The process that died.
        pid: i32,
        /// The signal that killed it (`Some(9)` for SIGKILL), if it was killed.
        signal: Option<i32>,
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// What it was running, when known (for example `"task #17"`).
        task: Option<String>,
    },

    /// An environment variable holds a value that cannot be used.
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    InvalidEnv {
        /// The variable's name, for example `SLURM_CPUS_PER_TASK`.
        var: String,
        /// The value found.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An argument is out of range or malformed.
    #[error("invalid argument {name} = {value}: {reason}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An operation was called in a state that does not allow it (start twice, join before start).
    #[error("{0}")]
    InvalidState(String),

    /// A bounded wait ran out.
    #[error(
        "{operation}{} timed out after {after:?}",
        task.as_deref().map(|t| format!(" ({t})")).unwrap_or_default()
    )]
    Timeout {
        /// What was waited for.
        operation: &'static str,
        /// How long it waited.
        after: Duration,
        /// The input that ran too long, for a pool's task timeout (for example `"item #17"`).
        task: Option<String>,
    },

    /// The other side is gone: no process that could answer is left.
    #[error("disconnected: {0}")]
    Disconnected(String),

    /// [`Queue::try_get`](crate::Queue::try_get) found the queue empty (Python's `queue.Empty`).
    #[error("the queue is empty")]
    Empty,

    /// [`Queue::try_put`](crate::Queue::try_put) found the queue full (Python's `queue.Full`):
    /// `maxsize` items in it, or no room in a bounded ring.
    #[error("the queue is full ({0})")]
    Full(String),

    /// [`Queue::get`](crate::Queue::get) took a poison pill put by
    /// [`Queue::put_pill`](crate::Queue::put_pill).
    #[error("a poison pill was taken from the queue: the consumer is asked to stop")]
    Stopped,

    /// A process died while holding a process-shared lock ([`Lock`](crate::Lock),
    /// [`RLock`](crate::RLock), or the lock of a [`SharedArray`](crate::SharedArray)): the data it
    /// protected may be half-updated. The lock itself was recovered and released; see
    /// [`AcquireError::OwnerDied`](crate::AcquireError::OwnerDied) to keep it instead.
    #[error(
        "{what}: its previous holder died while holding it; the data it protects may be half-updated"
    )]
    OwnerDied {
        /// What was being acquired: `"lock"`, or `"Condition"` when re-taken after a wait.
        what: &'static str,
    },

    /// A [`Barrier`](crate::Barrier) is broken: a party timed out or called
    /// [`abort`](crate::Barrier::abort), and every waiter is released with this error until
    /// [`reset`](crate::Barrier::reset).
    #[error("the barrier is broken (a party timed out or aborted)")]
    BrokenBarrier,

    /// A message is larger than the documented limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The message size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },

    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The MPI job is not what an `MpiPool` needs (feature `mpi`, see `docs/mpi.md`):
    /// a world of one rank, MPI already initialized, or too little thread support.
    #[error("MPI: {0}")]
    Mpi(String),

    /// A value that lives in this machine's shared memory (a `SharedArray`, `SharedValue` or
    /// sync object) was sent to an MPI rank (feature `mpi`), which shares no memory with the
    /// sender: send its contents as a `PodVec` instead.
    #[error("{type_name} cannot be sent to an MPI rank: {reason}")]
    NotSendable {
        /// The type of the value that could not be sent.
        type_name: &'static str,
        /// Why, and what to send instead.
        reason: &'static str,
    },

    /// A value could not be encoded or decoded on the wire.
    #[error("wire codec: {0}")]
    Codec(#[from] CodecError),
}

fn worker_died_message(
    pid: i32,
    signal: Option<i32>,
    code: Option<i32>,
    task: Option<&str>,
) -> String {
    let how = match (signal, code) {
        (Some(sig), _) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        (None, Some(code)) => format!("exited with code {code}"),
        (None, None) => "ended".to_string(),
    };
    match task {
        Some(task) => format!("worker process {pid} {how} while running {task}"),
        None => format!("process {pid} {how} before it answered"),
    }
}

/// The conventional name of a signal number (`9` → `"SIGKILL"`).
pub(crate) fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("unknown signal")
}

impl Error {
    pub(crate) fn io(context: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Io {
            context,
            source: source.into(),
        }
    }

    pub(crate) fn invalid_arg(
        name: &'static str,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidArgument {
            name,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// `true` for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// `true` for [`Error::Empty`].
    pub fn is_empty_queue(&self) -> bool {
        matches!(self, Error::Empty)
    }

    /// `true` for [`Error::Full`].
    pub fn is_full_queue(&self) -> bool {
        matches!(self, Error::Full(_))
    }

    /// `true` for [`Error::Disconnected`].
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Error::Disconnected(_))
    }

    /// The remote panic, for [`Error::TaskPanicked`].
    pub fn panic(&self) -> Option<&RemotePanic> {
        match self {
            Error::TaskPanicked { panic, .. } => Some(panic),
            _ => None,
        }
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::io("system call", e)
    }
}
