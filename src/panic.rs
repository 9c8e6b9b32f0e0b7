//! Catching a panic in a child and turning it into data ([`RemotePanic`]).

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::error::RemotePanic;

thread_local! {
    static LAST: RefCell<Option<RemotePanic>> = const { RefCell::new(None) };
    /// How many panics the hook recorded on this thread: [`catch`] takes `LAST` only when this
    /// moved, so it need not clear `LAST` before every call (a pool calls it for every input).
    static RECORDED: Cell<u64> = const { Cell::new(0) };
}

static HOOK: Once = Once::new();

/// Installs (once per process) a panic hook that records the message and location for
/// [`catch`], then runs the hook that was there before (which prints the usual message).
#[inline]
pub(crate) fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let message = payload_message(info.payload());
            let location = info.location().map(|l| l.to_string());
            LAST.with(|slot| {
                if let Ok(mut slot) = slot.try_borrow_mut() {
                    *slot = Some(RemotePanic { message, location });
                    RECORDED.with(|n| n.set(n.get().wrapping_add(1)));
                }
            });
            previous(info);
        }));
    });
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

/// Runs `f`, turning a panic into a [`RemotePanic`] with its message and location.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, RemotePanic> {
    install_hook();
    let before = RECORDED.with(Cell::get);
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Ok(r),
        Err(payload) => {
            let fallback = payload_message(&*payload);
            // What the hook recorded, if this panic went through it: code in `f` may have
            // replaced the hook, and then `LAST` holds an older panic's message.
            let recorded = LAST
                .with(|slot| slot.borrow_mut().take())
                .filter(|r| RECORDED.with(Cell::get) != before && r.message == fallback);
            // A payload that panics in its own Drop must not unwind out of here.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Err(recorded.unwrap_or(RemotePanic {
                message: fallback,
                location: None,
            }))
        }
    }
}

/// Aborts the process if dropped while a panic unwinds: guards code that must not unwind (the
/// child side of a fork, where unwinding would run the parent's destructors a second time).
pub(crate) struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            crate::sys::exit_now(134);
        }
    }
}
