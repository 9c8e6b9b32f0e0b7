//! The runner: `-j N` worker [`Process`]es fed through a [`Queue`] (the "mmul queue" pattern).
//!
//! The runner forks the workers first, while it is still single-threaded (a streamed input's
//! reader thread starts after, with the first job asked for), then hands out jobs
//! only as slots free up: a job goes on the jobs queue when fewer than `-j` are in flight, so
//! stopping is simply not putting more. Workers report [`Report::Started`] (the job's process
//! group, so the runner can signal it) and [`Report::Finished`]. A worker runs a failing job
//! again itself (`--retries`) and appends the job's joblog line the moment the job ends, before
//! it reports: so a SIGKILL of the runner loses no finished job's line (a worker that learns of
//! the runner's death while it writes the line finishes the line first; the window left is a
//! job that has written its results but not yet exited). For each finished job the runner prints
//! its output block, moves the progress bar, and checks `--halt`.
//!
//! Stopping (a signal, or `--halt now`): the runner sets a flag in memory shared with the
//! workers, then sends `SIGTERM` to the running jobs' process groups, `SIGKILL` after
//! [`TERM_GRACE`]. A job that fails while the run stops did not finish: the worker does not log
//! it, so `--resume` runs it again. A second signal kills the groups at once and exits. Workers
//! die with the runner (a parent-death signal), killing their job's group.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use multiproc::{Error, Process, Queue};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::args::{HaltOn, HaltWhen};
pub(crate) use crate::bar::{NoProgress, Progress};
use crate::flags::{OutputMode, Sched};
use crate::job::{
    Job, JobOutcome, Report, STOP_FLAG, TERM_GRACE, WORKER_SIGNALLED, WorkerConfig, shared_flag,
    worker_loop,
};
use crate::limits::Limits;
use crate::output::Output;
use crate::signals::{GROUPS, LAST_SIGNAL, SIGNALS, install_signal_handlers};
use crate::spill::{Captured, Held, SpillSocket, Stream};

/// How often the runner looks up from waiting, to notice signals and dead workers.
const TICK: Duration = Duration::from_millis(50);
/// How often the runner looks for new input while jobs run and a slot is free (streamed input).
const INPUT_POLL: Duration = Duration::from_millis(5);

/// Where the jobs come from, in increasing seq order (a seq it never gives was skipped, e.g. by
/// `--resume`).
pub(crate) trait JobSource {
    /// The next job, made to run in `slot` (`{%}`); waits at most `wait` for input that may
    /// still come.
    fn next_job(&mut self, slot: usize, wait: Duration) -> Next;
}

/// What a [`JobSource`] has next.
#[derive(Debug)]
pub(crate) enum Next {
    /// A job.
    Job(Box<Job>),
    /// Nothing yet; more input may come.
    NotYet,
    /// No more jobs: the input ended, or failed (with why).
    End(Result<(), String>),
}

/// `--halt` with any percentage already turned into a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HaltRule {
    /// Now (kill the running jobs) or soon (let them finish).
    pub(crate) when: HaltWhen,
    /// Which finished jobs count.
    pub(crate) on: HaltOn,
    /// After how many (at least 1).
    pub(crate) count: u64,
}

/// What the runner needs to know, beyond the jobs.
#[derive(Debug, Clone)]
pub(crate) struct EngineOpts {
    /// Jobs at once (`-j`), at least 1.
    pub(crate) jobs: usize,
    /// Runs of a failing job in all (`--retries`), at least 1.
    pub(crate) max_attempts: u32,
    /// Per-job time limit.
    pub(crate) timeout: Option<Duration>,
    /// `--halt`.
    pub(crate) halt: Option<HaltRule>,
    /// Environment for every job (thread caps).
    pub(crate) env: Vec<(String, String)>,
    /// The joblog (created, header written), appended to by the workers.
    pub(crate) joblog: Option<PathBuf>,
    /// How the jobs' output is shown.
    pub(crate) output: OutputMode,
    /// `--delay`, `--nice`, `--memfree`, `--load`.
    pub(crate) sched: Sched,
    /// `-t`.
    pub(crate) print_jobs: bool,
}

/// How the run went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Jobs that ended.
    pub(crate) done: u64,
    /// Of those, how many failed.
    pub(crate) failed: u64,
    /// Of those, how many succeeded.
    pub(crate) succeeded: u64,
    /// The signal that stopped the run, if one did.
    pub(crate) interrupted: Option<i32>,
    /// Why the input failed part way (no more jobs were started), if it did.
    pub(crate) input_error: Option<String>,
    /// Whether `--halt` stopped the run.
    pub(crate) halted: bool,
}

/// Where finished jobs go: the runner's [`Output`], or a multi-node agent's link back to its
/// runner ([`crate::agent`]).
pub(crate) trait Sink {
    /// Job `seq` was handed out (in increasing seq order).
    fn expect_up_to(&mut self, seq: u64);
    /// A job ended; `stdout` and `stderr` are its streams as the runner holds them (a big one
    /// still in its spill file, see [`crate::spill`]).
    ///
    /// # Errors
    /// When its output cannot be written.
    fn finished(
        &mut self,
        job: &Job,
        outcome: &JobOutcome,
        stdout: Held,
        stderr: Held,
    ) -> std::io::Result<()>;
    /// The run is over: write what is still held.
    ///
    /// # Errors
    /// As [`Sink::finished`].
    fn flush_rest(&mut self) -> std::io::Result<()>;
}

impl Sink for Output {
    fn expect_up_to(&mut self, seq: u64) {
        Output::expect_up_to(self, seq)
    }
    fn finished(
        &mut self,
        job: &Job,
        _: &JobOutcome,
        stdout: Held,
        stderr: Held,
    ) -> std::io::Result<()> {
        Output::finished(self, job, stdout, stderr)
    }
    fn flush_rest(&mut self) -> std::io::Result<()> {
        Output::flush_rest(self)
    }
}

/// A job handed out and not yet finished for good.
#[derive(Debug)]
struct InFlight {
    /// The job as sent.
    job: Job,
    /// Its process group, once started.
    pgid: Option<i32>,
    /// The worker running it, once started.
    worker: Option<i32>,
    /// When it was put on the jobs queue.
    sent: Instant,
}

/// Why dispatching stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Still dispatching.
    No,
    /// `--halt soon`: let running jobs finish.
    Drain,
    /// A signal or `--halt now`: running jobs are being ended; since when.
    Kill(Instant),
}

/// The runner's state between messages.
struct Runner<'a> {
    /// The run's options.
    opts: &'a EngineOpts,
    /// Shared with the workers: set once the run stops.
    stop_flag: &'static AtomicU8,
    /// Prints finished jobs' output.
    output: &'a mut dyn Sink,
    /// The progress bar, or nothing.
    progress: &'a mut dyn Progress,
    /// Jobs for the workers.
    jobs: Queue<Job>,
    /// Where the jobs come from.
    source: &'a mut dyn JobSource,
    /// Whether the source has no more jobs.
    source_done: bool,
    /// Jobs handed out so far.
    handed_out: u64,
    /// Slots (`{%}`) no running job holds.
    free_slots: BTreeSet<usize>,
    /// Jobs handed out and not finished, by seq.
    in_flight: HashMap<u64, InFlight>,
    /// Whether and how the run is stopping.
    stop: Stop,
    /// Whether the stop has escalated to `SIGKILL`.
    killed_hard: bool,
    /// Counts so far.
    summary: Summary,
    /// Jobs at once: `-j`, less any worker that died.
    capacity: usize,
    /// Where big outputs' files come from.
    spill: SpillSocket,
    /// `--delay`, `--memfree`, `--load`.
    limits: Limits,
    /// How long the limits hold the next start back, when they do.
    throttled: Option<Duration>,
    /// Jobs killed by `--memfree` that are to run again when they report.
    requeue: HashSet<u64>,
    /// Jobs to run again before new ones.
    retry: VecDeque<Job>,
}

/// Runs the jobs of `source` (`expected`: how many, when known) and reports each as it ends.
///
/// The workers are forked before the first job is asked of `source`, so a source may start a
/// thread then.
///
/// # Errors
///
/// When the workers cannot be started, a queue fails, every worker died, or the joblog or
/// `--results` cannot be written.
pub(crate) fn run(
    opts: &EngineOpts,
    source: &mut dyn JobSource,
    expected: Option<usize>,
    output: &mut dyn Sink,
    progress: &mut dyn Progress,
) -> Result<Summary, Box<dyn std::error::Error>> {
    let stop_flag = shared_flag()?;
    STOP_FLAG.store(std::ptr::from_ref(stop_flag).cast_mut(), Ordering::SeqCst);
    install_signal_handlers();
    let n_workers = opts.jobs.min(expected.unwrap_or(usize::MAX)).max(1);
    let jobs: Queue<Job> = Queue::new()?;
    let results: Queue<Report> = Queue::new()?;
    let spill = SpillSocket::new()?;
    let cfg = WorkerConfig {
        timeout: opts.timeout,
        env: opts.env.clone(),
        max_attempts: opts.max_attempts.max(1),
        joblog: opts.joblog.clone(),
        stop: stop_flag,
        spill_fd: spill.send_fd(),
        output: opts.output,
        nice: opts.sched.nice,
        print_jobs: opts.print_jobs,
    };
    let runner = std::process::id() as i32;
    let workers: Vec<Process> = (0..n_workers)
        .map(|i| {
            let (jobs, results, cfg) = (jobs.clone(), results.clone(), cfg.clone());
            Process::new(move || worker_loop(runner, &cfg, &jobs, &results))
                .name(format!("multiproc-w{}", i + 1))
                .daemon(true)
        })
        .collect();
    for w in &workers {
        w.start()?;
    }
    let mut r = Runner {
        opts,
        stop_flag,
        output,
        progress,
        jobs,
        source,
        source_done: false,
        handed_out: 0,
        free_slots: (1..=opts.jobs).collect(),
        in_flight: HashMap::new(),
        stop: Stop::No,
        killed_hard: false,
        summary: Summary::default(),
        capacity: n_workers,
        spill,
        limits: Limits::new(opts.sched.clone()),
        throttled: None,
        requeue: HashSet::new(),
        retry: VecDeque::new(),
    };
    let outcome = r.collect(&results, &workers);
    if outcome.is_err() {
        // The runner gives up: no job may outlive it.
        r.stop_flag.store(1, Ordering::SeqCst);
        for f in r.in_flight.values() {
            if let Some(pgid) = f.pgid {
                let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
    }
    // Every worker gets its pill; a worker that does not stop in time is killed (on drop).
    for _ in &workers {
        let _ = r.jobs.put_pill();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for w in &workers {
        let left = deadline.saturating_duration_since(Instant::now());
        if !matches!(w.join_timeout(left), Ok(true)) {
            let _ = w.kill();
        }
    }
    r.progress.finish();
    outcome?;
    r.output.flush_rest()?;
    Ok(r.summary)
}

impl Runner<'_> {
    /// Hands out jobs while slots are free (and the run is not stopping). With nothing in
    /// flight, waits up to a tick for input that may still come.
    fn dispatch(&mut self) -> Result<(), Error> {
        self.throttled = None;
        while self.stop == Stop::No
            && (!self.source_done || !self.retry.is_empty())
            && self.in_flight.len() < self.capacity
        {
            let slot = *self.free_slots.first().expect("a free slot");
            if let Err(wait) = self.limits.may_start() {
                self.throttled = Some(wait);
                break;
            }
            let wait = if self.in_flight.is_empty() {
                TICK
            } else {
                Duration::ZERO
            };
            if let Some(mut job) = self.retry.pop_front() {
                job.slot = slot;
                self.free_slots.remove(&slot);
                self.jobs.put(&job)?;
                let sent = Instant::now();
                self.in_flight.insert(
                    job.seq,
                    InFlight {
                        job,
                        pgid: None,
                        worker: None,
                        sent,
                    },
                );
                continue;
            }
            let job = match self.source.next_job(slot, wait) {
                Next::Job(job) => *job,
                Next::NotYet => break,
                Next::End(end) => {
                    self.source_done = true;
                    self.summary.input_error = end.err();
                    self.progress.total(self.handed_out);
                    break;
                }
            };
            self.free_slots.remove(&slot);
            self.output.expect_up_to(job.seq);
            self.jobs.put(&job)?;
            self.handed_out += 1;
            self.in_flight.insert(
                job.seq,
                InFlight {
                    job,
                    pgid: None,
                    worker: None,
                    sent: Instant::now(),
                },
            );
        }
        Ok(())
    }

    /// The loop: dispatch, wait for a report, act on it, until nothing is in flight.
    fn collect(
        &mut self,
        results: &Queue<Report>,
        workers: &[Process],
    ) -> Result<(), Box<dyn std::error::Error>> {
        loop {
            self.check_signal();
            self.dispatch()?;
            if self.in_flight.is_empty() {
                if (self.source_done && self.retry.is_empty()) || self.stop != Stop::No {
                    return Ok(());
                }
                if let Some(wait) = self.throttled {
                    std::thread::sleep(wait.min(TICK));
                }
                // Waiting for input (`dispatch` waited a tick): look at signals again.
                continue;
            }
            // With a slot free and the input still open, look again soon for new input.
            let wait = if self.in_flight.len() < self.capacity && !self.source_done {
                INPUT_POLL
            } else {
                TICK
            };
            let wait = self.throttled.map_or(wait, |t| t.clamp(INPUT_POLL, TICK));
            self.check_memory();
            let msg = results.get_timeout(wait);
            match msg {
                Ok(Report::Started { seq, pgid, worker }) => self.started(seq, pgid, worker),
                Ok(Report::Finished(outcome)) => self.finished(outcome)?,
                Err(Error::Timeout { .. }) => self.on_tick(workers)?,
                // The queue's "nobody can put" check may fire while every worker is between a
                // job and its next `get`; whether workers really died is checked here.
                Err(Error::Disconnected(_)) => {
                    std::thread::sleep(TICK / 10);
                    self.on_tick(workers)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn started(&mut self, seq: u64, pgid: i32, worker: i32) {
        let Some(f) = self.in_flight.get_mut(&seq) else {
            return;
        };
        f.pgid = Some(pgid);
        f.worker = Some(worker);
        if let Some(g) = GROUPS.get(f.job.slot) {
            g.store(pgid, Ordering::SeqCst);
        }
        // A job that starts while the run is being stopped is ended at once.
        if let Stop::Kill(_) = self.stop {
            let sig = if self.killed_hard {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            let _ = signal::killpg(Pid::from_raw(pgid), sig);
        }
    }

    fn finished(&mut self, mut outcome: JobOutcome) -> Result<(), Box<dyn std::error::Error>> {
        let Some(f) = self.in_flight.remove(&outcome.seq) else {
            return Ok(());
        };
        if let Some(g) = GROUPS.get(f.job.slot) {
            g.store(0, Ordering::SeqCst);
        }
        self.free_slots.insert(f.job.slot);
        if self.requeue.remove(&outcome.seq) && !outcome.ok() {
            // Killed by --memfree: it runs again later.
            self.retry.push_back(f.job);
            return Ok(());
        }
        // A worker may have seen the stop signal before the runner did.
        self.check_signal();
        let stopping = matches!(self.stop, Stop::Kill(_));
        if stopping && !outcome.logged && !outcome.ok() {
            // Ended by the stop itself (or never started): not done; --resume runs it again.
            return Ok(());
        }
        self.summary.done += 1;
        if !outcome.ok() {
            self.summary.failed += 1;
        }
        let (output, job) = (&mut *self.output, &f.job);
        let seq = outcome.seq;
        let mut stdout = Some(Held::of(
            std::mem::take(&mut outcome.stdout),
            seq,
            Stream::Stdout,
            &mut self.spill,
        ));
        let mut stderr = Some(Held::of(
            std::mem::take(&mut outcome.stderr),
            seq,
            Stream::Stderr,
            &mut self.spill,
        ));
        let mut res = Ok(());
        self.progress.suspend(&mut || {
            let (out, err) = (stdout.take(), stderr.take());
            if let (Some(out), Some(err)) = (out, err) {
                res = output.finished(job, &outcome, out, err);
            }
        });
        res?;
        self.progress.tick();
        if outcome.ok() {
            self.summary.succeeded += 1;
        }
        if let Some(halt) = self.opts.halt
            && self.stop == Stop::No
            && match halt.on {
                HaltOn::Fail => !outcome.ok() && self.summary.failed >= halt.count,
                HaltOn::Success => outcome.ok() && self.summary.succeeded >= halt.count,
                HaltOn::Done => self.summary.done >= halt.count,
            }
        {
            self.summary.halted = true;
            match halt.when {
                HaltWhen::Soon => self.stop = Stop::Drain,
                HaltWhen::Now => self.begin_kill(),
            }
        }
        Ok(())
    }

    /// `--memfree`: with available memory under half of SIZE, the youngest running job is
    /// killed (SIGTERM to its group) and runs again later, as GNU parallel does. One at a time.
    fn check_memory(&mut self) {
        if self.in_flight.len() < 2 || !self.requeue.is_empty() || !self.limits.memory_critical() {
            return;
        }
        let youngest = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.pgid.is_some())
            .max_by_key(|(_, f)| f.sent)
            .map(|(&seq, f)| (seq, f.pgid));
        if let Some((seq, Some(pgid))) = youngest {
            self.requeue.insert(seq);
            let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGTERM);
        }
    }

    /// Starts ending the running jobs: `SIGTERM` to each started job's process group.
    fn begin_kill(&mut self) {
        self.stop = Stop::Kill(Instant::now());
        self.stop_flag.store(1, Ordering::SeqCst);
        // Jobs still on the queue are not taken back (a second consumer's `try_get` waits while a
        // worker waits in `get`): a worker takes each, and `started` ends it at once.
        for f in self.in_flight.values() {
            if let Some(pgid) = f.pgid {
                let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGTERM);
            }
        }
    }

    /// Acts on a stop signal: the runner's own, or one a worker got first (it raised the shared
    /// stop flag with the signal's number while the run was not stopping).
    fn check_signal(&mut self) {
        if self.summary.interrupted.is_some() {
            return;
        }
        let signal = if SIGNALS.load(Ordering::SeqCst) > 0 {
            LAST_SIGNAL.load(Ordering::SeqCst)
        } else if !matches!(self.stop, Stop::Kill(_))
            && self.stop_flag.load(Ordering::SeqCst) >= WORKER_SIGNALLED
        {
            i32::from(self.stop_flag.load(Ordering::SeqCst) - WORKER_SIGNALLED)
        } else {
            return;
        };
        self.summary.interrupted = Some(signal);
        if !matches!(self.stop, Stop::Kill(_)) {
            self.begin_kill();
        }
    }

    /// Nothing arrived for a tick: escalate a stop that takes too long, and notice dead workers.
    fn on_tick(&mut self, workers: &[Process]) -> Result<(), Box<dyn std::error::Error>> {
        if let Stop::Kill(since) = self.stop {
            if !self.killed_hard && since.elapsed() >= TERM_GRACE {
                self.killed_hard = true;
                for f in self.in_flight.values() {
                    if let Some(pgid) = f.pgid {
                        let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                    }
                }
            }
            if since.elapsed() >= TERM_GRACE * 2 {
                // Whatever has not reported by now is given up on (not logged).
                self.in_flight.clear();
                return Ok(());
            }
        }
        let dead: Vec<i32> = workers
            .iter()
            .filter(|w| !w.is_alive())
            .filter_map(|w| w.pid())
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        self.capacity = workers.len() - dead.len();
        // A dead worker's job is lost: fail it (it never finished). A job handed out but not
        // started for a while, with the queue empty, was taken by a dead worker: hand it out again.
        let lost: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| match f.worker {
                Some(w) => dead.contains(&w),
                None => self.jobs.is_empty() && f.sent.elapsed() > Duration::from_secs(1),
            })
            .map(|(&seq, _)| seq)
            .collect();
        for seq in lost {
            let f = &self.in_flight[&seq];
            if f.worker.is_none() {
                self.jobs.put(&f.job)?;
                self.in_flight.get_mut(&seq).expect("in flight").sent = Instant::now();
                continue;
            }
            if let Some(pgid) = f.pgid {
                let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let outcome = JobOutcome {
                seq,
                start: crate::job::unix_now(),
                runtime: 0.0,
                exit: -1,
                signal: 9,
                timed_out: false,
                stdout: Captured::default(),
                stderr: Captured::bytes(
                    format!("multiproc: job {seq}: its worker process died\n").into_bytes(),
                ),
                attempts: 1,
                logged: false,
            };
            self.finished(outcome)?;
        }
        if self.capacity == 0 {
            return Err("every worker process died".into());
        }
        Ok(())
    }
}
