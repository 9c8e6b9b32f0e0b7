//! When the runner may start the next job: `--delay` (time since the last start), `--memfree`
//! (available memory, `MemAvailable` of /proc/meminfo) and `--load` (the 1-minute load average
//! of /proc/loadavg), and when `--memfree` asks for the youngest job to be killed (available
//! memory under half of SIZE; GNU parallel then runs that job again later).

use std::time::{Duration, Instant};

use crate::flags::Sched;

/// How often /proc is read again while the runner waits.
const RECHECK: Duration = Duration::from_millis(100);

/// The start limits of a run.
#[derive(Debug)]
pub(crate) struct Limits {
    sched: Sched,
    last_start: Option<Instant>,
    /// The last reading of /proc and when it was taken: (available bytes, load).
    reading: Option<(Instant, Option<u64>, Option<f64>)>,
}

impl Limits {
    /// Limits from the flags.
    pub(crate) fn new(sched: Sched) -> Self {
        Limits {
            sched,
            last_start: None,
            reading: None,
        }
    }

    fn read(&mut self) -> (Option<u64>, Option<f64>) {
        match self.reading {
            Some((t, mem, load)) if t.elapsed() < RECHECK => (mem, load),
            _ => {
                let mem = self.sched.memfree.and_then(|_| mem_available());
                let load = self.sched.load.and_then(|_| load_average());
                self.reading = Some((Instant::now(), mem, load));
                (mem, load)
            }
        }
    }

    /// `Ok` if a job may start now (and notes the start), else how long to wait before asking
    /// again.
    pub(crate) fn may_start(&mut self) -> Result<(), Duration> {
        if let (Some(delay), Some(last)) = (self.sched.delay, self.last_start) {
            let since = last.elapsed();
            if since < delay {
                return Err(delay - since);
            }
        }
        let (mem, load) = self.read();
        if let (Some(want), Some(have)) = (self.sched.memfree, mem)
            && have < want
        {
            return Err(RECHECK);
        }
        if let (Some(max), Some(have)) = (self.sched.load, load)
            && have >= max
        {
            return Err(RECHECK);
        }
        self.last_start = Some(Instant::now());
        Ok(())
    }

    /// Whether available memory is under half of `--memfree`: the youngest job is to be killed.
    pub(crate) fn memory_critical(&mut self) -> bool {
        let (mem, _) = self.read();
        matches!((self.sched.memfree, mem), (Some(want), Some(have)) if have < want / 2)
    }
}

/// Where `MemAvailable` is read: /proc/meminfo, or the file named by `MULTIPROC_MEMINFO` (a
/// test hook: tests/cli_compat.rs makes memory "run low" with it).
fn meminfo_path() -> std::path::PathBuf {
    std::env::var_os("MULTIPROC_MEMINFO").map_or_else(|| "/proc/meminfo".into(), Into::into)
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string(meminfo_path()).ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_spaces_the_starts() {
        let mut l = Limits::new(Sched {
            delay: Some(Duration::from_secs(3600)),
            ..Sched::default()
        });
        assert_eq!(l.may_start(), Ok(()));
        let wait = l.may_start().unwrap_err();
        assert!(wait > Duration::from_secs(3500), "{wait:?}");
    }

    #[test]
    fn memfree_and_load_read_proc() {
        assert!(mem_available().is_some_and(|m| m > 0));
        assert!(load_average().is_some_and(|l| l >= 0.0));
        // More free memory than any machine has: no start, and the youngest job must go.
        let mut l = Limits::new(Sched {
            memfree: Some(u64::MAX / 2),
            ..Sched::default()
        });
        assert!(l.may_start().is_err());
        assert!(l.memory_critical());
        let mut l = Limits::new(Sched {
            memfree: Some(1),
            load: Some(1e9),
            ..Sched::default()
        });
        assert_eq!(l.may_start(), Ok(()));
        assert!(!l.memory_critical());
    }
}
