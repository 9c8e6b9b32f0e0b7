//! What the scheduler does when something fails: a worker that exited (its inputs settled by
//! `settle`'s policy: retried, split, or failed), and tasks past their timeout.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Scheduler {
    /// A worker's pidfd became readable: collect its last replies, reap it, settle its tasks,
    /// and start a replacement.
    pub(super) fn on_exit(&mut self, i: usize) -> Result<()> {
        let Some(mut slot) = self.uninstall(i) else {
            return Ok(());
        };
        loop {
            let mut replies = Vec::new();
            if slot.link.receive(&mut replies).is_err() || replies.is_empty() {
                break;
            }
            self.handle_replies(&mut slot, replies);
        }
        let status = slot.worker.wait();
        super::super::trace::worker_ended(self.book.id, i, slot.pid, status);
        self.forget_pid(slot.pid);
        if !slot.inflight.is_empty() && !self.book.is_terminating() {
            // The input that was running: the one the timeout named, else the progress slot's.
            let snap = self.progress.get(i);
            let running = match &slot.kill {
                Some(k) => Some(k.culprit),
                None => (snap.item != IDLE).then_some((snap.seq, snap.item)),
            };
            // Inputs that finished but whose reply died with the worker: from its journal.
            let entries = self.progress.journal_entries(i);
            let saved = journal::salvage(&entries, &mut slot.inflight, running, slot.pid.as_raw());
            for (job, event) in saved.events {
                self.deliver(job, event);
            }
            if !slot.inflight.is_empty() {
                self.settle(&mut slot, status, saved.running, saved.inputs > 0);
            }
        }
        if !slot.stopping && !self.book.is_terminating() {
            self.replaced += 1;
            if let Err(e) = self.spawn(i) {
                // Leave the slot empty; `drive` tries again when no worker is left.
                if self.slots.iter().all(Option::is_none) {
                    return Err(e);
                }
            }
            super::super::trace::worker_replaced(
                self.book.id,
                i,
                slot.pid,
                self.slots[i].as_ref().map(|s| s.pid),
            );
        }
        Ok(())
    }

    /// Applies the failure policy ([`settle`]) to the tasks of a worker that ended with tasks in
    /// flight (their finished inputs already taken out, see `journal::salvage`): `running` is
    /// the input that was running, `progressed` whether any input of them had finished. Delivers
    /// the failures, re-queues the rest at the front.
    pub(super) fn settle(
        &mut self,
        slot: &mut Slot,
        status: ExitStatus,
        running: Option<(u64, u64)>,
        progressed: bool,
    ) {
        let (signal, code) = match status {
            ExitStatus::Signaled(s) => (Some(s), None),
            ExitStatus::Exited(c) => (None, Some(c)),
        };
        let tasks: Vec<(u64, Task)> = std::mem::take(&mut slot.inflight).into();
        let ending = Ending {
            running,
            progressed,
            timed_out: slot.kill.is_some(),
            init_failed: code == Some(worker::INIT_FAILED),
            retries: self.cfg.retries,
        };
        let inflight: Vec<InFlight> = tasks
            .iter()
            .map(|(seq, t)| InFlight {
                seq: *seq,
                count: t.items.count(),
                died: t.died,
            })
            .collect();
        let fates = settle(&inflight, &ending);
        let pid = slot.pid.as_raw();
        let mut requeue: Vec<Task> = Vec::new();
        let after = self.cfg.task_timeout.unwrap_or_default();
        for ((_, task), fate) in tasks.into_iter().zip(fates) {
            let error = |why: Why, label: String| match why {
                Why::TimedOut => Error::Timeout {
                    operation: "running a pool task",
                    after,
                    task: Some(label),
                },
                Why::Died => Error::WorkerDied {
                    pid,
                    signal,
                    code,
                    task: Some(label),
                },
                Why::InitFailed => Error::WorkerDied {
                    pid,
                    signal,
                    code,
                    task: Some(format!("{label} (the initializer panicked)")),
                },
            };
            match fate {
                Fate::Requeue { died } => requeue.push(Task { died, ..task }),
                Fate::FailAll { why } => self.fail_inputs(&task, |l| error(why, l)),
                Fate::FailOne { item, why } => {
                    let (one, rest) = self.split(task, item);
                    if why == Why::TimedOut {
                        let index = one.items.index(0);
                        super::super::trace::task_timed_out(self.book.id, slot.pid, index, after);
                    }
                    // `one` holds more than the input only when the task could not be split.
                    self.fail_inputs(&one, |l| error(why, l));
                    requeue.extend(rest);
                }
                Fate::RetryOne { item, died } => {
                    let (one, rest) = self.split(task, item);
                    let index = one.items.index(0);
                    super::super::trace::task_retried(self.book.id, slot.pid, index, died + 1);
                    requeue.push(Task { died, ..one });
                    requeue.extend(rest);
                }
            }
        }
        for t in requeue.into_iter().rev() {
            self.pending.push_front(t);
        }
    }

    /// Fails every input of `task` with the error `error` makes from its label.
    pub(super) fn fail_inputs(&mut self, task: &Task, error: impl Fn(String) -> Error) {
        for k in 0..task.items.count() as usize {
            let event = Event::Failed {
                index: task.items.index(k),
                error: error(task.items.label(k)),
            };
            self.deliver(task.job, event);
        }
    }

    /// Splits input `c` out of `task`: (the task of just that input, the task of the others).
    pub(super) fn split(&self, task: Task, c: u32) -> (Task, Option<Task>) {
        let n = task.items.count();
        if n == 1 {
            return (task, None);
        }
        // Finding where each input ends means decoding them: with duplicates of the task's
        // descriptors (the task keeps its own, to send again).
        let mut dups = FdTable::new(
            task.fds
                .iter()
                .flat_map(|f| f.iter())
                .filter_map(|fd| fd.try_clone().ok())
                .collect(),
        );
        let ends = self
            .jobs
            .get(&task.job)
            .and_then(|j| fdpass::decoding_with(&mut dups, || (j.ends)(&task.bytes, n)));
        let Some(ends) = ends else {
            return (task, None);
        };
        let start = |k: usize| if k == 0 { 0 } else { ends[k - 1] };
        let c = c as usize;
        let one = Task {
            job: task.job,
            items: Items::List(vec![task.items.index(c)].into()),
            bytes: Arc::new(task.bytes[start(c)..ends[c]].to_vec()),
            // Both parts keep the whole table: the indices in their bytes stay valid.
            fds: task.fds.clone(),
            died: task.died,
        };
        let mut bytes = Vec::with_capacity(task.bytes.len());
        let mut list = Vec::with_capacity(n as usize - 1);
        for k in (0..n as usize).filter(|&k| k != c) {
            bytes.extend_from_slice(&task.bytes[start(k)..ends[k]]);
            list.push(task.items.index(k));
        }
        let rest = Task {
            job: task.job,
            items: Items::List(list.into()),
            bytes: Arc::new(bytes),
            fds: task.fds,
            died: 0,
        };
        (one, Some(rest))
    }

    /// Signals workers whose current input is overdue; returns when to look again.
    pub(super) fn check_timeouts(&mut self, now: Instant) -> Option<Instant> {
        let limit = self.cfg.task_timeout?;
        let now_ns = sys::monotonic_ns();
        let mut next: Option<Instant> = None;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.inflight.is_empty() {
                continue;
            }
            if let Some(k) = &mut slot.kill {
                if !k.killed {
                    if now >= k.term_at + GRACE {
                        slot.worker.signal(Signal::SIGKILL);
                        k.killed = true;
                    } else {
                        soonest(k.term_at + GRACE);
                    }
                }
                continue;
            }
            let snap = self.progress.get(i);
            // The running task need not be the head: the worker may not have flushed the
            // replies of the tasks it finished before (it batches them while orders wait).
            let running = slot.inflight.iter().any(|(seq, _)| *seq == snap.seq);
            if running && snap.item != IDLE {
                let ran = Duration::from_nanos(now_ns.saturating_sub(snap.started_ns));
                if ran >= limit {
                    slot.worker.signal(Signal::SIGTERM);
                    slot.kill = Some(Kill {
                        culprit: (snap.seq, snap.item),
                        term_at: now,
                        killed: false,
                    });
                    soonest(now + GRACE);
                } else {
                    soonest(now + (limit - ran));
                }
            } else {
                soonest(now + limit.min(Duration::from_millis(10)));
            }
        }
        next
    }
}
