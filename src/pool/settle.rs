//! The failure policy of a pool: when a worker ends with tasks in flight, which inputs fail and
//! which run again. A pure function of what the scheduler knows ([`settle`]), tested without a
//! process; the scheduler (`super::sched`) applies its verdict.

/// What [`settle`] knows of one task in flight on a worker that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InFlight {
    pub(crate) seq: u64,
    /// How many inputs it holds.
    pub(crate) count: u32,
    /// How many workers died running it before.
    pub(crate) died: u32,
}

/// How a worker with tasks in flight ended, as far as the failure policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ending {
    /// The input it was running: (task seq, input index in the task), if known.
    pub(crate) running: Option<(u64, u64)>,
    /// Whether any input of its tasks had finished (a death between inputs after progress is
    /// not held against the task).
    pub(crate) progressed: bool,
    /// Whether the scheduler killed it for an overdue input (`running` names that input).
    pub(crate) timed_out: bool,
    /// Whether its initializer panicked (nothing sent to it could run).
    pub(crate) init_failed: bool,
    /// The pool's `retries`.
    pub(crate) retries: u32,
}

/// Why inputs fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The worker died running it.
    Died,
    /// It ran longer than the task timeout.
    TimedOut,
    /// The worker's initializer panicked.
    InitFailed,
}

/// The fate of one task of an ended worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Run the whole task again; `died` is its new count of deaths.
    Requeue { died: u32 },
    /// Every input of the task fails.
    FailAll { why: Why },
    /// Input `item` fails; the task's other inputs run again.
    FailOne { item: u32, why: Why },
    /// Input `item` runs again (`died`: its new count of deaths), and so do the others.
    RetryOne { item: u32, died: u32 },
}

/// The failure policy, one [`Fate`] per task (in order): the input that was running when the
/// worker ended fails (a timeout always; a death once it has used up its `retries`), the other
/// inputs run again. A worker that died between inputs fails nothing, unless the same first task
/// keeps killing workers (`retries + 3` times): then that task's inputs fail, so that the pool
/// cannot loop forever. If the initializer panicked, every input sent to the worker fails.
pub(crate) fn settle(tasks: &[InFlight], ending: &Ending) -> Vec<Fate> {
    if ending.init_failed {
        let why = Why::InitFailed;
        return tasks.iter().map(|_| Fate::FailAll { why }).collect();
    }
    let culprit = ending.running.and_then(|(seq, item)| {
        tasks
            .iter()
            .position(|t| t.seq == seq && item < u64::from(t.count))
            .map(|p| (p, item as u32))
    });
    let again = |t: &InFlight| Fate::Requeue { died: t.died };
    match culprit {
        Some((p, item)) => tasks
            .iter()
            .enumerate()
            .map(|(j, t)| {
                if j != p {
                    // Finished (its reply died with the worker) or not started: run again.
                    again(t)
                } else if ending.timed_out {
                    Fate::FailOne {
                        item,
                        why: Why::TimedOut,
                    }
                } else if t.died < ending.retries {
                    Fate::RetryOne {
                        item,
                        died: t.died + 1,
                    }
                } else {
                    Fate::FailOne {
                        item,
                        why: Why::Died,
                    }
                }
            })
            .collect(),
        None => tasks
            .iter()
            .enumerate()
            .map(|(j, t)| match j {
                0 if t.died + u32::from(!ending.progressed) > ending.retries + 3 => {
                    Fate::FailAll { why: Why::Died }
                }
                0 => Fate::Requeue {
                    died: t.died + u32::from(!ending.progressed),
                },
                _ => again(t),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(seq: u64, count: u32, died: u32) -> InFlight {
        InFlight { seq, count, died }
    }

    fn ending(running: Option<(u64, u64)>) -> Ending {
        Ending {
            running,
            progressed: false,
            timed_out: false,
            init_failed: false,
            retries: 0,
        }
    }

    #[test]
    fn a_death_mid_input_fails_that_input_and_requeues_the_rest() {
        let tasks = [task(1, 4, 0), task(2, 4, 0), task(3, 2, 1)];
        let fates = settle(&tasks, &ending(Some((2, 3))));
        assert_eq!(
            fates,
            [
                Fate::Requeue { died: 0 },
                Fate::FailOne {
                    item: 3,
                    why: Why::Died
                },
                Fate::Requeue { died: 1 },
            ]
        );
    }

    #[test]
    fn retries_rerun_the_input_until_they_are_used_up() {
        let e = Ending {
            retries: 2,
            ..ending(Some((5, 0)))
        };
        assert_eq!(
            settle(&[task(5, 1, 0)], &e),
            [Fate::RetryOne { item: 0, died: 1 }]
        );
        assert_eq!(
            settle(&[task(5, 1, 1)], &e),
            [Fate::RetryOne { item: 0, died: 2 }]
        );
        assert_eq!(
            settle(&[task(5, 1, 2)], &e),
            [Fate::FailOne {
                item: 0,
                why: Why::Died
            }]
        );
    }

    #[test]
    fn a_timeout_fails_its_input_even_with_retries_left() {
        let e = Ending {
            timed_out: true,
            retries: 5,
            ..ending(Some((7, 1)))
        };
        assert_eq!(
            settle(&[task(7, 3, 0), task(8, 1, 0)], &e),
            [
                Fate::FailOne {
                    item: 1,
                    why: Why::TimedOut
                },
                Fate::Requeue { died: 0 },
            ]
        );
    }

    #[test]
    fn a_death_between_inputs_requeues_until_the_head_keeps_killing() {
        let tasks = [task(1, 2, 0), task(2, 2, 0)];
        assert_eq!(
            settle(&tasks, &ending(None)),
            [Fate::Requeue { died: 1 }, Fate::Requeue { died: 0 }]
        );
        // A stale progress slot (another seq, or an index past the task) is no culprit either.
        assert_eq!(
            settle(&tasks, &ending(Some((9, 0)))),
            settle(&tasks, &ending(Some((1, 2))))
        );
        let hopeless = [task(1, 2, 3), task(2, 2, 0)];
        assert_eq!(
            settle(&hopeless, &ending(None)),
            [Fate::FailAll { why: Why::Died }, Fate::Requeue { died: 0 }]
        );
        // After inputs of the tasks finished (saved from the journal), a death between inputs
        // is not held against the head: the map makes progress however often workers die.
        let progressed = Ending {
            progressed: true,
            ..ending(None)
        };
        assert_eq!(
            settle(&hopeless, &progressed),
            [Fate::Requeue { died: 3 }, Fate::Requeue { died: 0 }]
        );
    }

    #[test]
    fn a_panicking_initializer_fails_everything_sent() {
        let e = Ending {
            init_failed: true,
            ..ending(Some((1, 0)))
        };
        assert_eq!(
            settle(&[task(1, 2, 0), task(2, 1, 0)], &e),
            [
                Fate::FailAll {
                    why: Why::InitFailed
                },
                Fate::FailAll {
                    why: Why::InitFailed
                },
            ]
        );
    }
}
