//! The multi-node runner: in the batch script of an allocation of several nodes
//! (`SLURM_JOB_NUM_NODES` > 1, not inside a job step), `multiproc` runs jobs on every node, with
//! no new flag. SLURM is the distributed engine: one `srun` step per node
//! (`--nodes=1 --ntasks=1 --nodelist=NODE --cpus-per-task=<that node's CPUs> --exact --overlap`)
//! starts an [agent](crate::agent) (this binary, a hidden subcommand) that runs that node's
//! share with the local engine. The runner, on the first node, hands out inputs and collects
//! results over each step's own stdin/stdout ([`crate::proto`]): no port, no ssh.
//!
//! - **Dynamic balance**: an agent never holds more jobs than its slots; a job is sent to the
//!   agent with the most free slots the moment a slot frees up.
//! - **Slots per node** come from that node's allocation (`SLURM_JOB_CPUS_PER_NODE`), passed as
//!   the step's `--cpus-per-task`, so the agent's sizing rule (the one-node rule) sees it; `-j N`
//!   means N per node (as GNU parallel's `-j` per `--sshlogin`).
//! - **Output** comes back in chunks after each job ends and is gathered in memory, or past
//!   4 MiB in a capture file ([`crate::gather`]), then printed as on one node.
//! - **Joblog**: the runner writes each line as the result arrives, Host = the node's
//!   `SLURMD_NODENAME`; `--resume`/`--resume-failed` key on Seq only, so they work across runs of
//!   any size (one node or many).
//! - **A node that fails** (its agent killed, its step cancelled, its output garbled) costs only
//!   the jobs it was running: each goes back to the queue (a node loss counts as one attempt of
//!   `--retries`) or, with no attempt left, is logged failed (exit -1, signal 9); the run goes on
//!   with the other nodes. An agent that stopped on a signal (its step cancelled) says so
//!   first: its jobs were interrupted, not failed, and go out again without counting. The
//!   runner never waits on a dead agent: its stdout ends.
//! - **Stopping** (SIGTERM/SIGINT/SIGHUP, e.g. SLURM's end of job): no more jobs are handed
//!   out; each `srun` gets SIGTERM (forwarded to its agent, which ends its running jobs and
//!   reports only those that finished); results that arrive are logged; after [`STOP_WAIT`] the
//!   `srun`s get SIGKILL. Jobs not logged are run by `--resume`, each once.
//! - `{%}` is per node and slot; `MULTIPROC_NODE` / `PARALLEL_SSHLOGIN` name the node in each
//!   job's environment (as does SLURM's own `SLURMD_NODENAME`).
//! - Not in multi-node mode: `--halt` (refused). `--dry-run` prints locally. The progress bar
//!   (`--bar`, or stderr a terminal) counts jobs over all nodes.
//!   `MULTIPROC_NODES=1` (or running inside a step, e.g. `srun -N1 multiproc ...`) keeps a run
//!   on the node it starts on; `--nodes LIST` limits it to those nodes ([`crate::nodes`]). The binary must be at the same path on every node (a shared
//!   file system, as for the job script itself).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, IsTerminal, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use crate::args::{Config, Halt};
use crate::engine::{JobSource, Next, NoProgress, Progress};
use crate::feed::{self, Feed};
use crate::gather::{Gathered, held_len};
use crate::job::JobOutcome;
use crate::joblog::Entry;
use crate::nodes::NodeAlloc;
use crate::output::Output;
use crate::proto::{FromAgent, ToAgent, read_frame, write_frame};
use crate::spill::{Captured, Held};
use crate::{Failure, INTERNAL};

/// How long the runner waits for its agents after a stop before it kills their `srun`s.
pub(crate) const STOP_WAIT: Duration = Duration::from_secs(8);
/// How long the runner waits for the first agent to say hello.
const HELLO_WAIT: Duration = Duration::from_secs(120);
/// How long a lost agent's `srun` is given to say whether a stop signal ended it.
const STOP_SIGNAL_WAIT: Duration = Duration::from_secs(2);

/// The stop signal (`SIGINT`, `SIGTERM`, `SIGHUP`) that ended an `srun`, directly or as its
/// `128 + n` exit status (srun's when its task ended on the signal), if one did.
fn stop_signal_of(status: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let sig = status.signal().or_else(|| status.code().map(|c| c - 128))?;
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .contains(&sig)
        .then_some(sig)
}

/// How often the loop looks up from waiting (signals, deadlines).
const TICK: Duration = Duration::from_millis(50);

/// Signals received by the multi-node runner, and the last one.
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Notes the signal; the loop acts on it. Async-signal-safe (atomics only).
extern "C" fn note_signal(sig: libc::c_int) {
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let action = signal::SigAction::new(
        SigHandler::Handler(note_signal),
        signal::SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to atomics, which is async-signal-safe.
        let _ = unsafe { signal::sigaction(sig, &action) };
    }
}

/// What an agent's reader thread reports.
enum Event {
    /// A frame.
    Msg(FromAgent),
    /// Its stdout ended (the agent or its step is gone), with the reason if it was an error.
    Gone(Option<String>),
}

/// An agent, as the runner sees it.
struct Agent {
    node: String,
    child: Child,
    /// Closed (None) to tell the agent there is no more work, or once it is gone.
    stdin: Option<ChildStdin>,
    /// 0 until its hello.
    slots: usize,
    /// Jobs it runs: seq -> input values.
    running: BTreeMap<u64, Vec<String>>,
    gone: bool,
    /// The signal it said it stopped on, if it did.
    stopped: Option<i32>,
}

/// The runner's state.
struct Runner<'a> {
    cfg: &'a Config,
    feed: Feed<'a>,
    source_done: bool,
    /// Inputs handed out (not counting hand-outs again).
    handed_out: u64,
    agents: Vec<Agent>,
    /// Jobs to hand out again (their node was lost).
    again: VecDeque<(u64, Vec<String>)>,
    /// Node losses per seq (counted against `--retries`).
    lost: HashMap<u64, u32>,
    output: Output,
    /// Output of running jobs, as it arrives.
    gathered: Gathered,
    progress: Box<dyn Progress>,
    joblog: Option<File>,
    stop: Option<Instant>,
    killed: bool,
    done: u64,
    failed: u64,
    interrupted: Option<i32>,
    input_error: Option<String>,
}

/// Starts the agent on `node`, and the thread that reads its frames.
fn spawn_agent(node: &NodeAlloc, i: usize, tx: Sender<(usize, Event)>) -> Result<Agent, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::usage(format!("cannot find the multiproc binary: {e}")))?;
    let mut cmd = Command::new("srun");
    cmd.args([
        "--nodes=1",
        "--ntasks=1",
        &format!("--nodelist={}", node.name),
        &format!("--cpus-per-task={}", node.cpus),
        "--exact",
        "--overlap",
        "--kill-on-bad-exit=0",
        "--job-name=multiproc-agent",
    ]);
    cmd.arg(exe).arg(crate::agent::SUBCOMMAND);
    cmd.args(std::env::args_os().skip(1));
    // The agent sizes itself from the step's --cpus-per-task, not the batch's.
    cmd.env_remove("SLURM_CPUS_PER_TASK");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::usage(format!("cannot run srun for node {}: {e}", node.name)))?;
    let stdout = child.stdout.take().expect("piped");
    let stdin = child.stdin.take();
    std::thread::Builder::new()
        .name(format!("multiproc-from-{}", node.name))
        .spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                match read_frame::<_, FromAgent>(&mut r) {
                    Ok(Some(m)) => {
                        if tx.send((i, Event::Msg(m))).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send((i, Event::Gone(None)));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send((i, Event::Gone(Some(e.to_string()))));
                        return;
                    }
                }
            }
        })
        .map_err(|e| Failure::usage(format!("cannot start a reader thread: {e}")))?;
    Ok(Agent {
        node: node.name.clone(),
        child,
        stdin,
        slots: 0,
        running: BTreeMap::new(),
        gone: false,
        stopped: None,
    })
}

/// Runs `cfg`'s jobs on `nodes`, one agent each; the exit status as on one node.
///
/// # Errors
/// Bad input before any job (as on one node), `--halt`, an agent that cannot be started, or
/// every agent gone with jobs left.
pub(crate) fn run(cfg: &Config, nodes: &[NodeAlloc]) -> Result<ExitCode, Failure> {
    if cfg.halt != Halt::Never {
        return Err(Failure::usage(
            "--halt is not supported in a multi-node run (set MULTIPROC_NODES=1 to run on this node only)",
        ));
    }
    let unsupported = [
        (cfg.extras.pipe.is_some(), "--pipe and --pipepart"),
        (cfg.extras.shape.header, "--header"),
        (cfg.extras.shape.multi.is_some(), "-X and -m"),
    ];
    if let Some((_, flag)) = unsupported.iter().find(|(on, _)| *on) {
        return Err(Failure::usage(format!(
            "{flag} are not supported in a multi-node run yet (set MULTIPROC_NODES=1 to run on this node only)"
        )));
    }
    let state = crate::open_joblog(cfg)?;
    let slots: usize = nodes.iter().map(|n| n.cpus).sum();
    let (inputs, _) = feed::open_inputs(cfg, slots.max(1))?;
    let feed = Feed::new(cfg, inputs, state);
    let to_run = feed.counts().map(|(_, n)| n as usize);
    if cfg.verbose > 0 {
        let list: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!(
                    "{} ({} CPU{})",
                    n.name,
                    n.cpus,
                    if n.cpus == 1 { "" } else { "s" }
                )
            })
            .collect();
        eprintln!(
            "multiproc: {} nodes: {}; one agent each (srun){}",
            nodes.len(),
            list.join(", "),
            to_run.map_or(String::new(), |n| format!(", {n} jobs to run"))
        );
    }
    if to_run == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    let joblog = match &cfg.joblog {
        Some(p) => Some(
            OpenOptions::new()
                .append(true)
                .open(p)
                .map_err(|e| Failure::usage(format!("--joblog {}: {e}", p.display())))?,
        ),
        None => None,
    };
    install_signal_handlers();
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut agents = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        match spawn_agent(node, i, tx.clone()) {
            Ok(a) => agents.push(a),
            Err(e) => {
                for a in &mut agents {
                    let _ = a.child.kill();
                    let _ = a.child.wait();
                }
                return Err(e);
            }
        }
    }
    drop(tx);
    let mut r = Runner {
        cfg,
        feed,
        source_done: false,
        handed_out: 0,
        agents,
        again: VecDeque::new(),
        lost: HashMap::new(),
        output: Output::new(cfg.keep_order, cfg.results.clone()),
        gathered: Gathered::default(),
        progress: if cfg.bar || std::io::stderr().is_terminal() {
            Box::new(crate::Bar::new(to_run.map(|n| n as u64)))
        } else {
            Box::new(NoProgress)
        },
        joblog,
        stop: None,
        killed: false,
        done: 0,
        failed: 0,
        interrupted: None,
        input_error: None,
    };
    let res = r.collect(&rx);
    r.reap();
    r.progress.finish();
    res?;
    r.output
        .flush_rest()
        .map_err(|e| Failure::usage(format!("cannot write the output: {e}")))?;
    r.exit_code()
}

impl Runner<'_> {
    /// The loop: hand out, receive, until every agent is gone.
    fn collect(&mut self, rx: &Receiver<(usize, Event)>) -> Result<(), Failure> {
        let started = Instant::now();
        let mut closed = false;
        loop {
            self.check_signal();
            if self.stop.is_none() {
                self.dispatch()?;
            }
            if self.agents.iter().all(|a| a.gone) {
                return self.all_gone();
            }
            let idle = self.agents.iter().all(|a| a.running.is_empty());
            if !closed
                && (self.stop.is_some() || (idle && self.source_done && self.again.is_empty()))
            {
                // No more work: closing stdin ends each agent once its jobs are done.
                for a in &mut self.agents {
                    a.stdin = None;
                }
                closed = true;
            }
            if self.agents.iter().all(|a| a.slots == 0) && started.elapsed() > HELLO_WAIT {
                return Err(Failure {
                    message: format!("no agent started within {HELLO_WAIT:?}"),
                    code: INTERNAL,
                });
            }
            match rx.recv_timeout(TICK) {
                Ok((i, Event::Msg(FromAgent::Hello { node, slots, pid }))) => {
                    let a = &mut self.agents[i];
                    a.slots = slots.max(1);
                    if self.cfg.verbose > 1 {
                        eprintln!("multiproc: agent on {node} (pid {pid}): {slots} slots");
                    }
                }
                Ok((
                    i,
                    Event::Msg(FromAgent::Done {
                        slot,
                        command_line,
                        outcome,
                    }),
                )) => self.finished(i, slot, &command_line, &outcome)?,
                Ok((i, Event::Msg(FromAgent::Stopped { signal }))) => {
                    self.agents[i].stopped = Some(signal);
                }
                Ok((i, Event::Msg(FromAgent::Output { seq, stream, chunk }))) => self
                    .gathered
                    .push(i, seq, stream, &chunk)
                    .map_err(|e| Failure {
                        message: format!("cannot keep the output of job {seq}: {e}"),
                        code: INTERNAL,
                    })?,
                Ok((i, Event::Gone(why))) => self.agent_gone(i, why)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.all_gone(),
            }
        }
    }

    /// Every agent is gone: fine if no work is left, else an error.
    fn all_gone(&mut self) -> Result<(), Failure> {
        let left = !self.again.is_empty() || !self.source_done;
        if self.stop.is_none() && left {
            return Err(Failure {
                message: format!(
                    "every node's agent ended with jobs left, after {} jobs ({} failed); \
                     --resume runs the rest",
                    self.done, self.failed
                ),
                code: INTERNAL,
            });
        }
        Ok(())
    }

    /// Sends jobs to agents with free slots, most free slots first.
    fn dispatch(&mut self) -> Result<(), Failure> {
        loop {
            let Some(i) = self
                .agents
                .iter()
                .enumerate()
                .filter(|(_, a)| !a.gone && a.stdin.is_some() && a.running.len() < a.slots)
                .max_by_key(|(i, a)| (a.slots - a.running.len(), usize::MAX - i))
                .map(|(i, _)| i)
            else {
                return Ok(());
            };
            let (seq, args) = match self.again.pop_front() {
                Some(job) => job,
                None if self.source_done => return Ok(()),
                None => {
                    let idle = self.agents.iter().all(|a| a.running.is_empty());
                    let wait = if idle { TICK } else { Duration::ZERO };
                    match self.feed.next_job(0, wait) {
                        Next::Job(job) => {
                            self.handed_out += 1;
                            (job.seq, job.args)
                        }
                        Next::NotYet => return Ok(()),
                        Next::End(end) => {
                            self.source_done = true;
                            self.input_error = end.err();
                            self.progress.total(self.handed_out);
                            return Ok(());
                        }
                    }
                }
            };
            self.output.expect_up_to(seq);
            let a = &mut self.agents[i];
            let msg = ToAgent::Run {
                seq,
                args: args.clone(),
            };
            let sent = write_frame(a.stdin.as_mut().expect("checked"), &msg);
            a.running.insert(seq, args);
            if sent.is_err() {
                // Its stdin broke: the agent is gone; its reader reports it and the job goes
                // back through `agent_gone`.
                a.stdin = None;
            }
        }
    }

    /// A job ended on agent `i`.
    fn finished(
        &mut self,
        i: usize,
        slot: usize,
        command_line: &str,
        outcome: &JobOutcome,
    ) -> Result<(), Failure> {
        let Some(args) = self.agents[i].running.remove(&outcome.seq) else {
            return Ok(());
        };
        // Its count of lost attempts is not needed any more: nothing is kept per job.
        self.lost.remove(&outcome.seq);
        let host = self.agents[i].node.clone();
        let streams = self.gathered.take(i, outcome.seq);
        self.record(&host, slot, args, command_line, outcome, streams)
    }

    /// Logs, counts and prints one finished (or given up) job.
    fn record(
        &mut self,
        host: &str,
        slot: usize,
        args: Vec<String>,
        command_line: &str,
        o: &JobOutcome,
        (stdout, stderr): (Held, Held),
    ) -> Result<(), Failure> {
        let io = |what: &str, e: std::io::Error| Failure {
            message: format!("{what}: {e}"),
            code: INTERNAL,
        };
        if let Some(log) = &mut self.joblog {
            let start = UNIX_EPOCH + Duration::from_secs_f64(o.start.max(0.0));
            let mut e = Entry::local(
                o.seq,
                start,
                Duration::from_secs_f64(o.runtime.max(0.0)),
                command_line.to_string(),
            );
            e.host = host.to_string();
            e.receive = held_len(&stdout);
            e.exitval = o.exit;
            e.signal = o.signal;
            log.write_all(e.to_line().as_bytes())
                .map_err(|e| io("cannot write the joblog", e))?;
        }
        self.done += 1;
        if !o.ok() {
            self.failed += 1;
        }
        let job = self.feed.make_job(o.seq, slot, args);
        let (output, mut res) = (&mut self.output, Ok(()));
        let mut streams = Some((stdout, stderr));
        self.progress.suspend(&mut || {
            if let Some((out, err)) = streams.take() {
                res = output.finished(&job, out, err);
            }
        });
        self.progress.tick();
        res.map_err(|e| io("cannot write the output", e))
    }

    /// Agent `i`'s stdout ended: its running jobs go back to the queue, or are logged failed.
    fn agent_gone(&mut self, i: usize, why: Option<String>) -> Result<(), Failure> {
        let a = &mut self.agents[i];
        a.gone = true;
        a.stdin = None;
        // A garbled stream: make sure the step ends too.
        if why.is_some() {
            let _ = signal::kill(Pid::from_raw(a.child.id() as i32), Signal::SIGTERM);
        }
        let lost = std::mem::take(&mut a.running);
        self.gathered.drop_agent(i);
        let node = a.node.clone();
        if self.stop.is_none() && self.agents[i].stopped.is_none() && why.is_none() {
            self.agents[i].stopped = self.await_stop_signal(i);
        }
        if self.stop.is_some() {
            // Stopping: the jobs it ran did not finish; --resume runs them.
            return Ok(());
        }
        if let Some(sig) = self.agents[i].stopped {
            // Stopped on a signal (its step cancelled, or the job ending before the runner got
            // its own signal): its jobs were interrupted, not failed; they go out again. If the
            // whole job is ending, the runner's stop keeps them from running and from the log.
            if !lost.is_empty() {
                eprintln!(
                    "multiproc: node {node}: the agent stopped on signal {sig}; its {} running job{} go{} to other nodes",
                    lost.len(),
                    if lost.len() == 1 { "" } else { "s" },
                    if lost.len() == 1 { "es" } else { "" },
                );
            }
            self.again.extend(lost);
            return Ok(());
        }
        let why = why.unwrap_or_else(|| "its step ended".to_string());
        if !lost.is_empty() || !self.source_done {
            eprintln!(
                "multiproc: node {node}: the agent is gone ({why}); {} running job{} to run elsewhere or log failed",
                lost.len(),
                if lost.len() == 1 { "" } else { "s" }
            );
        }
        let max = self.cfg.max_attempts.get();
        for (seq, args) in lost {
            let n = self.lost.entry(seq).or_insert(0);
            *n += 1;
            if *n < max {
                self.again.push_back((seq, args));
                continue;
            }
            let o = JobOutcome {
                seq,
                start: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                runtime: 0.0,
                exit: -1,
                signal: 9,
                timed_out: false,
                stdout: Captured::default(),
                stderr: Captured::default(),
                attempts: *n,
                logged: false,
            };
            let job = self.feed.make_job(seq, 0, args.clone());
            let msg = format!("multiproc: job {seq}: its node {node}'s agent died\n");
            let streams = (Held::Bytes(Vec::new()), Held::Bytes(msg.into_bytes()));
            self.record(&node, 0, args, &job.command_line, &o, streams)?;
        }
        Ok(())
    }

    /// Agent `i`'s output ended without a word of why. SLURM's end of job signals every step
    /// in no set order, and `srun` may end before it relays the agent's last message: waits (at
    /// most [`STOP_SIGNAL_WAIT`]) for the runner's own signal (then the stop handles the agent's
    /// jobs) or for `srun`'s status, and returns the stop signal it ended on, if it did.
    fn await_stop_signal(&mut self, i: usize) -> Option<i32> {
        let until = Instant::now() + STOP_SIGNAL_WAIT;
        loop {
            self.check_signal();
            if self.stop.is_some() {
                return None;
            }
            match self.agents[i].child.try_wait() {
                Ok(Some(status)) => return stop_signal_of(status),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
                _ => return None,
            }
        }
    }

    /// On a signal: stop handing out, pass SIGTERM to every `srun`; after [`STOP_WAIT`] (or on
    /// a second signal), SIGKILL them.
    fn check_signal(&mut self) {
        let n = SIGNALS.load(Ordering::SeqCst);
        if n > 0 && self.stop.is_none() {
            self.stop = Some(Instant::now());
            self.interrupted = Some(LAST_SIGNAL.load(Ordering::SeqCst));
            self.signal_agents(Signal::SIGTERM);
        }
        if let Some(since) = self.stop
            && !self.killed
            && (n > 1 || since.elapsed() > STOP_WAIT)
        {
            self.killed = true;
            self.signal_agents(Signal::SIGKILL);
        }
    }

    fn signal_agents(&mut self, sig: Signal) {
        for a in &self.agents {
            if !a.gone {
                let _ = signal::kill(Pid::from_raw(a.child.id() as i32), sig);
            }
        }
    }

    /// Reaps every `srun`, killing one that does not end within [`STOP_WAIT`].
    fn reap(&mut self) {
        for a in &mut self.agents {
            a.stdin = None;
        }
        let deadline = Instant::now() + STOP_WAIT;
        for a in &mut self.agents {
            loop {
                match a.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = a.child.kill();
                        let _ = a.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }

    /// The exit status, as on one node.
    fn exit_code(&self) -> Result<ExitCode, Failure> {
        if let Some(sig) = self.interrupted {
            eprintln!(
                "multiproc: stopped by signal {sig} after {} jobs; the jobs it ended are not in the joblog (--resume runs them)",
                self.done
            );
            return Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8));
        }
        if let Some(e) = &self.input_error {
            eprintln!(
                "multiproc: {e}; no more jobs were started after {} ({} failed)",
                self.done, self.failed
            );
            return Ok(ExitCode::from(
                self.failed.clamp(u64::from(crate::USAGE), 101) as u8,
            ));
        }
        Ok(ExitCode::from(self.failed.min(101) as u8))
    }
}
