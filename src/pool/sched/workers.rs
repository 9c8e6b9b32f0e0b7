//! The scheduler's workers: starting them (through the [`Starter`](crate::pool::start) seam),
//! replacing one that died, stopping, killing and reaping them all.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Scheduler {
    /// Starts the workers with `starter`.
    pub(crate) fn start(
        cfg: Config,
        starter: Box<dyn Starter>,
        book: Arc<Book>,
    ) -> Result<Scheduler> {
        let n = cfg.processes;
        // Read once here, inherited by every forked worker (see `fnref::text_range`).
        let _ = super::super::fnref::text_range();
        let spin = spins(n);
        let mut core = Scheduler {
            ep: Epoll::new()?,
            gens: 0,
            live: 0,
            spin,
            ready: Vec::new(),
            progress: Arc::new(Progress::new(n)?),
            cfg,
            starter,
            book,
            slots: (0..n).map(|_| None).collect(),
            pending: VecDeque::new(),
            jobs: Jobs::default(),
            next_job: 1,
            next_seq: 1,
            ema_ns: 1_000_000.0,
            closed: false,
            terminated: false,
            deferred: Vec::new(),
            replaced: 0,
            stopped: false,
            spare: Vec::new(),
        };
        core.spawn_all()?;
        super::super::trace::pool_started(core.book.id, n);
        Ok(core)
    }

    /// Starts a worker in every slot: all at once if the starter can (one round trip to a fork
    /// server, forks back to back), else one by one.
    pub(super) fn spawn_all(&mut self) -> Result<()> {
        if !self.starter.starts_many() {
            for i in 0..self.slots.len() {
                self.spawn(i)?;
            }
            return Ok(());
        }
        let mut specs = Vec::new();
        for i in 0..self.slots.len() {
            self.progress.reset(i);
            specs.push(self.spec(i, ()));
        }
        let book = self.book.clone();
        let mut pids = book.pids.lock().unwrap_or_else(|e| e.into_inner());
        if self.book.is_terminating() {
            return Ok(());
        }
        // A forked worker keeps neither the readiness set nor (the starter sees to it) the
        // parent's ends of the other workers.
        let close = [self.ep.as_fd().as_raw_fd()];
        let workers = self.starter.start_many(specs, &close)?;
        pids.extend(workers.iter().map(|(w, _)| w.pid()));
        drop(pids);
        let mut started = workers.into_iter().enumerate();
        while let Some((i, (worker, link))) = started.next() {
            let pid = worker.pid();
            if let Err(e) = self.install(i, worker, link) {
                // Not watched, so never reaped by `drive`: end the rest here.
                for (_, (mut w, _)) in started {
                    w.signal(Signal::SIGKILL);
                    let _ = w.wait();
                    self.forget_pid(w.pid());
                }
                return Err(e);
            }
            super::super::trace::worker_started(self.book.id, i, pid);
        }
        Ok(())
    }

    /// Puts a started worker in slot `i` and watches its descriptors. On failure the worker is
    /// killed and reaped.
    pub(super) fn install(
        &mut self,
        i: usize,
        mut worker: Box<dyn Worker>,
        link: Link,
    ) -> Result<()> {
        self.gens = self.gens.wrapping_add(1);
        let generation = self.gens;
        let watched = self
            .ep
            .add(link.fd(), token(i, generation, false), false)
            .and_then(|()| {
                self.ep
                    .add(worker.death_fd(), token(i, generation, true), false)
            });
        if let Err(e) = watched {
            self.ep.delete(link.fd());
            worker.signal(Signal::SIGKILL);
            let _ = worker.wait();
            self.forget_pid(worker.pid());
            return Err(e);
        }
        self.slots[i] = Some(Slot::new(worker, link, generation));
        self.live = self.slots.iter().flatten().count();
        Ok(())
    }

    /// Takes the worker out of slot `i` and stops watching its descriptors.
    pub(super) fn uninstall(&mut self, i: usize) -> Option<Slot> {
        let slot = self.slots[i].take()?;
        self.ep.delete(slot.link.fd());
        self.ep.delete(slot.worker.death_fd());
        self.live = self.slots.iter().flatten().count();
        Some(slot)
    }

    /// Watches the socket of slot `i` for writing exactly while it has bytes queued.
    pub(super) fn sync_out(&mut self, i: usize) {
        let Some(slot) = self.slots[i].as_mut() else {
            return;
        };
        let want = slot.link.wants_write();
        if want != slot.out_armed
            && self
                .ep
                .modify(slot.link.fd(), token(i, slot.generation, false), want)
                .is_ok()
        {
            slot.out_armed = want;
        }
    }

    pub(super) fn spec<E>(&self, i: usize, end: E) -> WorkerSpec<E> {
        WorkerSpec {
            end,
            progress: self.progress.clone(),
            slot: i,
            max_tasks: self.cfg.max_tasks_per_child,
            timed: self.cfg.task_timeout.is_some(),
            initializer: self.cfg.initializer.clone(),
            thread_env: self.cfg.thread_env.clone(),
        }
    }

    pub(super) fn spawn(&mut self, i: usize) -> Result<()> {
        let (link, end) = transport::pair()?;
        self.progress.reset(i);
        let close: Vec<_> = self
            .slots
            .iter()
            .flatten()
            .flat_map(|s| [s.link.fd().as_raw_fd(), s.worker.death_fd().as_raw_fd()])
            .chain([self.ep.as_fd().as_raw_fd()])
            .collect();
        let spec = self.spec(i, end);
        let book = self.book.clone();
        let mut pids = book.pids.lock().unwrap_or_else(|e| e.into_inner());
        if self.book.is_terminating() {
            return Ok(());
        }
        let worker = self.starter.start(spec, &close)?;
        pids.push(worker.pid());
        drop(pids);
        let pid = worker.pid();
        self.install(i, worker, link)?;
        super::super::trace::worker_started(self.book.id, i, pid);
        Ok(())
    }

    pub(super) fn forget_pid(&self, pid: Pid) {
        self.book
            .pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&p| p != pid);
    }

    /// After `terminate`: reap every worker, drop every task, tell every job.
    pub(crate) fn abort_all(&mut self) {
        if self.terminated {
            return;
        }
        self.terminated = true;
        self.book.kill_all();
        self.reap_all();
        self.pending.clear();
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            self.deliver(id, Event::Aborted);
        }
        self.jobs.retain(|_, j| j.sink.is_none());
    }

    pub(super) fn reap_all(&mut self) {
        let mut live: Vec<Slot> = (0..self.slots.len())
            .filter_map(|i| self.uninstall(i))
            .collect();
        // Kill them all first, then wait: they die together.
        for s in &live {
            s.worker.signal(Signal::SIGKILL);
        }
        for s in &mut live {
            let _ = s.worker.wait();
            self.forget_pid(s.pid);
        }
    }

    /// Asks every worker to exit once its queue is empty.
    pub(crate) fn stop_workers(&mut self) {
        self.stopped = true;
        for i in 0..self.slots.len() {
            if let Some(slot) = self.slots[i].as_mut() {
                if !slot.stopping {
                    slot.stopping = true;
                    slot.link.queue_stop();
                    let _ = slot.link.flush();
                    self.sync_out(i);
                }
            }
        }
    }

    /// Whether every worker has exited and been reaped.
    pub(crate) fn all_exited(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Kills and reaps the workers that are left (the end of `join`'s patience).
    pub(crate) fn kill_remaining(&mut self) {
        self.reap_all();
    }
}
