//! Fuzzing (proptest) of every decoder that reads bytes from another process (issue 12): the
//! wire frames and postcard decoding (`wire_frames`), the descriptor table (`fd_table`); the
//! queue's records are fuzzed in `queue/ring_fuzz.rs`, a pool task's inputs and outcomes
//! (plain-data and postcard chunks) in `pool/chunk_fuzz.rs`, and the joblog reader in the
//! command's `joblog_fuzz.rs`. Each property feeds arbitrary and mutated inputs and requires a typed error
//! or a value, never a panic, and no allocation beyond the documented limit.
//!
//! The budget: `PROPTEST_CASES` (default below) cases per property; docs/reliability.md gives
//! the executions of the last run and the command.

mod fd_table;
mod wire_frames;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
pub(crate) const DEFAULT_CASES: u32 = 2000;

/// The proptest configuration of every fuzz property: `PROPTEST_CASES` or [`DEFAULT_CASES`].
pub(crate) fn config() -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// `bytes` with up to 8 mutations (flip, overwrite, truncate, insert) chosen by `edits`.
pub(crate) fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(op, at, val) in edits {
        if bytes.is_empty() {
            bytes.push(val);
            continue;
        }
        let at = at % bytes.len();
        match op % 4 {
            0 => bytes[at] ^= 1 << (val % 8),
            1 => bytes[at] = val,
            2 => bytes.truncate(at),
            _ => bytes.insert(at, val),
        }
    }
    bytes
}
