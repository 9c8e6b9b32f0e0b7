//! How many of the pending tasks each worker takes in one dispatch: a pure function of the
//! workers' loads, so that the policy is tested without processes.
//!
//! - **Balance:** tasks go to the workers with the fewest in flight (water-filling), at most
//!   `depth` in flight per worker and `cap` over all.
//! - **Concentration:** when the tasks are so short that a full pipeline (`depth`) for every
//!   worker would pass `cap` (128 workers × 512 tiny tasks), only as many idle workers join as
//!   full pipelines allow, the lowest slots first (the ones that were busy before). Each worker
//!   then wakes once per pipeline of work, not once per `cap / live` tasks; the others sleep.
//!   With longer tasks (`live × depth ≤ cap`) every worker is used.

/// A worker that can take tasks: (in flight, slot, room for more).
pub(super) type Open = (usize, usize, usize);

/// The bounds of one dispatch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The most tasks in flight per worker.
    pub(super) depth: usize,
    /// The most tasks in flight over all workers.
    pub(super) cap: usize,
    /// How many workers the pool has.
    pub(super) live: usize,
}

/// Sorts `open` (fewest in flight first, then by slot), drops the idle workers that stay idle
/// (see the module docs), and returns how many of `pending` tasks each remaining entry takes,
/// given `in_flight` tasks in flight over all workers.
pub(super) fn plan(
    open: &mut Vec<Open>,
    pending: usize,
    in_flight: usize,
    limits: Limits,
) -> Vec<usize> {
    open.sort_unstable();
    let budget = pending.min(limits.cap.saturating_sub(in_flight));
    if limits.live * limits.depth > limits.cap {
        let idle = open.iter().take_while(|o| o.0 == 0).count();
        let keep = budget.div_ceil(limits.depth.max(1)).min(idle);
        open.drain(keep..idle);
    }
    water_fill(open, budget)
}

/// How many of `tasks` each of the `open` workers (sorted, fewest in flight first) takes so
/// that each task goes to a worker with the fewest in flight: `level` is the load of the first
/// `k` workers, and each round gives them one task each until the next workers' level is
/// reached. Constant work per task given.
fn water_fill(open: &[Open], mut tasks: usize) -> Vec<usize> {
    let mut share = vec![0; open.len()];
    let Some(&(mut level, _, _)) = open.first() else {
        return share;
    };
    let mut k = 0;
    while tasks > 0 {
        while k < open.len() && open[k].0 <= level {
            k += 1;
        }
        let mut gave = false;
        for (j, &(load, _, room)) in open[..k].iter().enumerate() {
            if tasks == 0 {
                break;
            }
            if load + share[j] == level && share[j] < room {
                share[j] += 1;
                tasks -= 1;
                gave = true;
            }
        }
        if !gave && k == open.len() {
            break;
        }
        level += 1;
    }
    share
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(depth: usize, cap: usize, live: usize) -> Limits {
        Limits { depth, cap, live }
    }

    fn idle(n: usize, room: usize) -> Vec<Open> {
        (0..n).map(|i| (0, i, room)).collect()
    }

    #[test]
    fn few_long_tasks_go_one_to_each_worker() {
        let mut open = idle(128, 2);
        let lim = limits(2, 16_384, 128);
        let got = plan(&mut open, 10, 0, lim);
        assert_eq!(got.iter().sum::<usize>(), 10);
        assert_eq!(got.iter().filter(|&&g| g == 1).count(), 10);
    }

    #[test]
    fn loads_are_levelled_and_room_is_respected() {
        // Loads 0, 3, 5 with room 4, 1, 3: 6 tasks level them at 4 (the second is full at 4).
        let mut open = vec![(5, 2, 3), (0, 0, 4), (3, 1, 1)];
        let lim = limits(8, 1000, 3);
        let got = plan(&mut open, 6, 8, lim);
        let loads: Vec<usize> = open.iter().zip(&got).map(|(o, g)| o.0 + g).collect();
        assert_eq!(open.iter().map(|o| o.1).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(got, [4, 1, 1]);
        assert_eq!(loads, [4, 4, 6]);
        // No room anywhere: nothing is given.
        let mut full = vec![(8, 0, 0), (8, 1, 0)];
        assert_eq!(plan(&mut full, 5, 16, lim), [0, 0]);
    }

    #[test]
    fn tiny_tasks_fill_few_workers_when_the_cap_binds() {
        let lim = limits(512, 16_384, 128);
        let mut open = idle(128, 512);
        let got = plan(&mut open, 200_000, 0, lim);
        assert_eq!(got.len(), 32, "16384 / 512 workers take part");
        assert!(got.iter().all(|&g| g == 512));
        assert_eq!(
            open.iter().map(|o| o.1).collect::<Vec<_>>(),
            (0..32).collect::<Vec<_>>()
        );
        // A worker that answered its block gets a full one again; the sleeping ones stay idle.
        let mut open = idle(128, 512);
        let got = plan(&mut open, 200_000, 16_384 - 512, lim);
        assert_eq!(got, [512]);
    }

    #[test]
    fn the_cap_bounds_tasks_in_flight() {
        let lim = limits(4, 10, 4);
        let mut open = idle(4, 4);
        let got = plan(&mut open, 100, 6, lim);
        assert_eq!(got.iter().sum::<usize>(), 4);
    }
}
