//! Fuzzing (proptest) of the joblog reader, which reads what other processes (earlier runs,
//! killed at any point) wrote: arbitrary bytes and mutated valid joblogs give a state or a typed
//! [`JoblogError`], never a panic, and the state never counts more lines than the file has.
//! Part of the crate's fuzz suite (issue 12; `PROPTEST_CASES` sets the budget).

use std::path::Path;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use crate::joblog::{Entry, HEADER, JoblogError, JoblogState};

fn config() -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    match JoblogState::parse(bytes, Path::new("fuzz.joblog")) {
        Ok(state) => prop_assert!(state.lines <= lines),
        Err(JoblogError::NotAJoblog { .. } | JoblogError::BadLine { .. }) => {}
        Err(e) => prop_assert!(false, "unexpected error {e}"),
    }
    Ok(())
}

fn valid_log(jobs: &[(u64, u32, u32, String)]) -> Vec<u8> {
    let mut log = format!("{HEADER}\n").into_bytes();
    for (seq, secs, ms, command) in jobs {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(*secs));
        let e = Entry::local(
            *seq,
            start,
            Duration::from_millis(u64::from(*ms)),
            command.clone(),
        );
        log.extend_from_slice(e.to_line().as_bytes());
    }
    log
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes, and arbitrary bytes after a valid header.
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(&bytes)?;
        let mut after_header = format!("{HEADER}\n").into_bytes();
        after_header.extend_from_slice(&bytes);
        check(&after_header)?;
    }

    /// A valid joblog reads back every job; mutated (flipped, overwritten, cut, inserted
    /// bytes) it gives a state or a typed error.
    #[test]
    fn mutated_joblogs(
        jobs in proptest::collection::vec((1u64..1_000_000, any::<u32>(), any::<u32>(), "[ -~]{0,40}"), 1..10),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..8),
    ) {
        let log = valid_log(&jobs);
        let state = JoblogState::parse(&log, Path::new("fuzz.joblog")).unwrap();
        prop_assert_eq!(state.lines, jobs.len());
        let mut bytes = log;
        for &(op, at, val) in &edits {
            if bytes.is_empty() {
                break;
            }
            let at = at % bytes.len();
            match op % 4 {
                0 => bytes[at] ^= 1 << (val % 8),
                1 => bytes[at] = val,
                2 => bytes.truncate(at),
                _ => bytes.insert(at, val),
            }
        }
        check(&bytes)?;
    }
}
