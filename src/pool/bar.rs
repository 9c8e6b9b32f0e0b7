//! `PoolBuilder::progress_bar`: a tqdm-like bar (done/total, rate, ETA) for map-like calls, drawn
//! on stderr by the parent from the pool's progress reports (the `on_progress` hook), and only
//! when stderr is a terminal. Workers never draw. Needs the `progress` feature (indicatif).

use super::ProgressHook;

/// The pool's progress hook: `user`'s, with the bar's after it when `bar` is asked for and stderr
/// is a terminal.
#[cfg(feature = "progress")]
pub(super) fn with_bar(user: Option<ProgressHook>, bar: bool) -> Option<ProgressHook> {
    use std::io::IsTerminal;
    use std::sync::{Arc, Mutex};

    if !bar || !std::io::stderr().is_terminal() {
        return user;
    }
    // The bar of the call in progress and the last count it showed.
    let state: Mutex<Option<(indicatif::ProgressBar, usize)>> = Mutex::new(None);
    Some(Arc::new(move |done, total| {
        if let Some(f) = &user {
            f(done, total);
        }
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        // Counts only grow within a call: a smaller one is a new call (the last one failed).
        if state.as_ref().is_some_and(|(_, last)| done <= *last) {
            if let Some((old, _)) = state.take() {
                old.abandon();
            }
        }
        let (bar, last) = state.get_or_insert_with(|| (new_bar(total), 0));
        bar.set_position(done as u64);
        *last = done;
        if total == Some(done) {
            bar.finish();
            // The finished bar keeps its line, as tqdm's does; what comes next starts below it.
            eprintln!();
            *state = None;
        }
    }))
}

/// A bar for `total` inputs (a counter with a rate when the total is unknown, as for `imap`).
#[cfg(feature = "progress")]
fn new_bar(total: Option<usize>) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

    let bar = ProgressBar::with_draw_target(total.map(|n| n as u64), ProgressDrawTarget::stderr());
    let template = match total {
        Some(_) => "{wide_bar} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}]",
        None => "{pos} done [{elapsed_precise}, {per_sec}]",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Without the `progress` feature there is no bar: the user's hook only.
#[cfg(not(feature = "progress"))]
pub(super) fn with_bar(user: Option<ProgressHook>, _bar: bool) -> Option<ProgressHook> {
    user
}
