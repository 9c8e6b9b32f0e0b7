//! multiproc: Python's `multiprocessing` model for Rust.

mod error;
mod fork;
mod panic;
mod pool;
mod process;
mod queue;
mod sizing;
mod sys;
mod wire;

pub use crate::error::{CodecError, Error, RemotePanic, Result};
pub use crate::pool::{AsyncResult, IMap, Pool, PoolBuilder};
pub use crate::process::{JoinHandle, Process, spawn};
pub use crate::queue::{DEFAULT_QUEUE_CAPACITY, JoinableQueue, Queue, QueueIter};
pub use crate::sizing::{CpuBudget, CpuSource, cpu_budget, cpu_budget_with, cpu_count};
pub use crate::wire::MAX_MESSAGE_BYTES;
