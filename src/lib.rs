//! multiproc: Python's `multiprocessing` model for Rust.

mod error;
mod fdpass;
mod fork;
mod panic;
mod pipe;
mod process;
mod queue;
mod shm;
mod sizing;
mod sync;
mod sys;
mod wire;

pub use crate::error::{CodecError, Error, RemotePanic, Result};
pub use crate::pipe::{Connection, PipeReceiver, PipeSender, pipe, pipe_oneway};
pub use crate::process::{JoinHandle, Process, spawn};
pub use crate::queue::{DEFAULT_QUEUE_CAPACITY, JoinableQueue, Queue, QueueIter};
pub use crate::shm::{ArrayGuard, Pod, PodVec, SharedArray, SharedValue, ValueGuard};
pub use crate::sizing::{CpuBudget, CpuSource, cpu_budget, cpu_budget_with, cpu_count};
pub use crate::sync::{
    AcquireError, AcquireResult, Barrier, Condition, ConditionGuard, Event, Lock, LockGuard, RLock,
    RLockGuard, Semaphore, SemaphoreGuard,
};
pub use crate::wire::MAX_MESSAGE_BYTES;
