//! [`PoolBuilder`]: a pool's settings, and how [`build`](PoolBuilder::build) starts it.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Settings of a [`Pool`]; made by [`Pool::builder`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::Pool;
///
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(|| { /* open a file, seed an RNG... once per worker */ })
///     .max_tasks_per_child(1000)
///     .retries(1)
///     .task_timeout(Duration::from_secs(60))
///     .build()?;
/// assert_eq!(pool.processes(), 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[must_use]
pub struct PoolBuilder {
    processes: Option<usize>,
    initializer: Option<self::start::Initializer>,
    max_tasks_per_child: Option<u64>,
    retries: u32,
    task_timeout: Option<Duration>,
    chunksize: Option<usize>,
    limit_threads: bool,
    max_message_bytes: usize,
    on_progress: Option<ProgressHook>,
    start_method: Option<StartMethod>,
    progress_bar: bool,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("max_tasks_per_child", &self.max_tasks_per_child)
            .field("retries", &self.retries)
            .field("task_timeout", &self.task_timeout)
            .field("chunksize", &self.chunksize)
            .field("start_method", &self.start_method)
            .finish_non_exhaustive()
    }
}

impl PoolBuilder {
    /// The defaults ([`Pool::builder`]).
    pub(super) fn new() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            initializer: None,
            max_tasks_per_child: None,
            retries: 0,
            task_timeout: None,
            chunksize: None,
            limit_threads: true,
            max_message_bytes: MAX_MESSAGE_BYTES,
            on_progress: None,
            start_method: None,
            progress_bar: false,
        }
    }

    /// The number of worker processes. Without it, [`cpu_count`](crate::cpu_count) (which reads
    /// SLURM's variables first, then the usable CPUs). `0` is refused by
    /// [`build`](PoolBuilder::build).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Runs `f` once in each worker when it starts (and in each replacement). With
    /// [`StartMethod::Fork`] it may capture anything: a worker is a copy of the parent's memory.
    /// With [`StartMethod::ForkServer`] it must be a fn item or a closure that captures nothing
    /// (`build` refuses a capturing one; [`initializer_fn`](PoolBuilder::initializer_fn) says
    /// so at compile time). If it panics, the worker exits and the tasks sent to
    /// it fail with [`Error::WorkerDied`].
    pub fn initializer<F: Fn() + Send + Sync + 'static>(mut self, f: F) -> Self {
        self.initializer = Some(self::start::Initializer {
            fn_ref: fnref::init_ref::<F>(),
            run: Arc::new(f),
        });
        self
    }

    /// Like [`initializer`](PoolBuilder::initializer), for a function pointer: a fn item or a
    /// closure that captures nothing, so that it works under every start method, checked at
    /// compile time (a closure that captures does not compile).
    ///
    /// ```
    /// use multiproc::{Pool, StartMethod};
    ///
    /// fn setup() { /* seed an RNG, open a log... once per worker */ }
    ///
    /// let pool = Pool::builder()
    ///     .processes(1)
    ///     .start_method(StartMethod::ForkServer)
    ///     .initializer_fn(setup)
    ///     .build()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// ```compile_fail
    /// let name = String::from("worker");
    /// let b = multiproc::Pool::builder().initializer_fn(move || println!("{name}"));
    /// ```
    pub fn initializer_fn(mut self, f: fn()) -> Self {
        self.initializer = Some(self::start::Initializer {
            fn_ref: Some(FnRef::of_init(f)),
            run: Arc::new(f),
        });
        self
    }

    /// Each worker exits after `k` tasks (chunks) and a fresh one takes its place (Python's
    /// `maxtasksperchild`). `0` is refused by `build`.
    pub fn max_tasks_per_child(mut self, k: u64) -> Self {
        self.max_tasks_per_child = Some(k);
        self
    }

    /// Re-runs an input up to `n` times when the worker running it dies (default 0: the input
    /// fails with [`Error::WorkerDied`]). Panics and timeouts are not retried.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Kills (`SIGTERM`, then `SIGKILL` 100 ms later) the worker of an input that has run longer
    /// than `d`; that input gets [`Error::Timeout`], the worker is replaced. A zero duration is
    /// refused by `build`.
    pub fn task_timeout(mut self, d: Duration) -> Self {
        self.task_timeout = Some(d);
        self
    }

    /// The number of inputs per task for `map`, `imap` and friends, instead of the default
    /// (Python's: `ceil(len / (4 × processes))` for `map`, 1 for `imap`). `0` is refused.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n);
        self
    }

    /// Whether to set `OMP_NUM_THREADS`, `MKL_NUM_THREADS` and `OPENBLAS_NUM_THREADS` in the
    /// workers to `max(1, cpus / processes)` (default `true`), so that numerical libraries
    /// called from tasks do not oversubscribe the CPUs. A variable already set in the parent's
    /// environment is never changed.
    pub fn limit_thread_env(mut self, yes: bool) -> Self {
        self.limit_threads = yes;
        self
    }

    /// The largest encoded task (a chunk of inputs, or a context) accepted, in bytes; larger
    /// ones give [`Error::TooLarge`]. Default and maximum:
    /// [`MAX_MESSAGE_BYTES`].
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }

    /// Calls `f(done, total)` as results of `map`-like calls and `imap` come in (`total` is
    /// `None` for `imap`). It runs in the parent with the pool's lock held: it must not call the
    /// pool.
    pub fn on_progress(mut self, f: impl Fn(usize, Option<usize>) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }

    /// How the workers are started: [`StartMethod::Fork`] (forks of this program) or
    /// [`StartMethod::ForkServer`] (forks of a fresh execution of its binary, for threaded and
    /// big programs). Without it: `MULTIPROC_START_METHOD`, else
    /// [`set_start_method`]'s, else `Fork`. Replacement workers come
    /// from the same start method.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Draws a progress bar on stderr for each map-like call, as tqdm's `process_map` does:
    /// done/total, rate and ETA (for `imap`, whose total is unknown, the count and rate). Only
    /// when stderr is a terminal: in a batch job or a pipe nothing is drawn. The parent draws it
    /// from the pool's progress reports (after an [`on_progress`](Self::on_progress) hook);
    /// workers never write to the terminal. Needs the `progress` feature (indicatif).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::Pool::builder().processes(2).progress_bar(true).build()?;
    /// let squares = pool.map(|x: u64| x * x, 0..1000)?;
    /// assert_eq!(squares[999], 998_001);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[cfg(feature = "progress")]
    pub fn progress_bar(mut self, yes: bool) -> Self {
        self.progress_bar = yes;
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for `processes(0)`, `max_tasks_per_child(0)`,
    /// `task_timeout(0)`, `chunksize(0)` or a `max_message_bytes` of 0 or over the maximum;
    /// [`Error::InvalidEnv`] from [`cpu_count`](crate::cpu_count); [`Error::Io`] if a fork fails.
    pub fn build(self) -> Result<Pool> {
        self.build_with(None)
    }

    /// [`build`](PoolBuilder::build), with workers started by `starter` (the MPI ranks of
    /// `crate::mpi`) instead of the pool's start method.
    pub(crate) fn build_with(self, starter: Option<Box<dyn self::start::Starter>>) -> Result<Pool> {
        let processes = match self.processes {
            Some(0) => {
                return Err(Error::invalid_arg(
                    "processes",
                    0,
                    "a pool needs at least one process",
                ));
            }
            Some(n) => n,
            None => crate::sizing::cpu_count()?,
        };
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::invalid_arg(
                "max_tasks_per_child",
                0,
                "must be at least 1",
            ));
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(Error::invalid_arg(
                "task_timeout",
                "0s",
                "must be longer than zero",
            ));
        }
        if self.chunksize == Some(0) {
            return Err(Error::invalid_arg("chunksize", 0, "must be at least 1"));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(Error::invalid_arg(
                "max_message_bytes",
                self.max_message_bytes,
                format!("must be between 1 and {MAX_MESSAGE_BYTES}"),
            ));
        }
        let thread_env = if self.limit_threads {
            let cpus = crate::sizing::cpu_count().unwrap_or(1);
            Some((cpus / processes).max(1).to_string())
        } else {
            None
        };
        let mpi_ranks = starter.is_some();
        let method = match starter {
            Some(_) => StartMethod::Fork,
            None => self::start::resolve(self.start_method)?,
        };
        if method == StartMethod::ForkServer
            && self
                .initializer
                .as_ref()
                .is_some_and(|i| i.fn_ref.is_none())
        {
            return Err(Error::invalid_arg(
                "initializer",
                "a closure that captures",
                "a ForkServer pool runs its initializer in a fresh process, which cannot \
                 receive a capture: pass a fn item or a closure that captures nothing",
            ));
        }
        let book = Arc::new(Book::default());
        let core = Scheduler::start(
            Config {
                processes,
                max_tasks_per_child: self.max_tasks_per_child,
                retries: self.retries,
                task_timeout: self.task_timeout,
                initializer: self.initializer,
                thread_env,
            },
            match starter {
                Some(starter) => starter,
                None => self::start::starter(method)?,
            },
            book.clone(),
        )?;
        Ok(Pool {
            shared: Arc::new(Shared {
                core: Mutex::new(core),
                book,
                driver: driver::Driver::new()?,
            }),
            processes,
            chunksize: AtomicUsize::new(self.chunksize.unwrap_or(0)),
            limit: self.max_message_bytes,
            on_progress: bar::with_bar(self.on_progress, self.progress_bar),
            mpi_ranks,
        })
    }
}
