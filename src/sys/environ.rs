//! A child's environment made before the fork, installed in the child by one pointer store.
//!
//! A worker that sets variables itself (`setenv` after the fork) allocates four or five times
//! per variable: the `NAME=value` string, a new `environ` array, a search-tree node. Each
//! allocation in a fresh child writes heap pages the parent shares with it copy-on-write, so each
//! costs page faults and copies: setting three variables was a quarter of a 128-worker pool's
//! allocations and ~6% of its start. [`ChildEnv`] is built once per burst of forks, in the
//! parent, from the parent's environment at that moment plus the variables to add; a child
//! points `environ` at it and allocates nothing.
//!
//! What the child may do after: read the environment (`getenv`, `std::env::var`), and change it
//! (`setenv` sees that `environ` is not the array it allocated, and copies it into a new one, as
//! it does after any program assigns `environ`). The strings are never freed in the child: the
//! child keeps a reference for its whole life.

use std::ffi::{CString, OsString};
use std::os::raw::c_char;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

unsafe extern "C" {
    /// The C library's environment array (POSIX `environ`), what `getenv` reads.
    static mut environ: *const *const c_char;
}

/// An environment ready to become a child's: `NAME=value` strings and the null-terminated array
/// of pointers to them.
pub(crate) struct ChildEnv {
    /// Owns the strings `ptrs` points to (a `CString`'s bytes stay put when the vector moves).
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

// SAFETY: the pointers point into `_strings`, owned by the same value and never changed after
// construction; sharing or sending the value only lets other threads read them.
unsafe impl Send for ChildEnv {}
// SAFETY: as for `Send`: nothing is mutable after construction.
unsafe impl Sync for ChildEnv {}

impl std::fmt::Debug for ChildEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChildEnv({} variables)", self.ptrs.len() - 1)
    }
}

impl ChildEnv {
    /// This process's environment now, with each of `names` that it lacks set to `value`.
    /// Entries that cannot be a C string (a NUL inside) are left out, as `execve` would.
    pub(crate) fn with_defaults(names: &[&str], value: &str) -> ChildEnv {
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for name in names {
            if !vars.iter().any(|(k, _)| k.as_bytes() == name.as_bytes()) {
                vars.push(((*name).into(), value.into()));
            }
        }
        let strings: Vec<CString> = vars
            .iter()
            .filter_map(|(k, v)| {
                let mut kv = Vec::with_capacity(k.len() + v.len() + 2);
                kv.extend_from_slice(k.as_bytes());
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        let ptrs = strings
            .iter()
            .map(|s| s.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        ChildEnv {
            _strings: strings,
            ptrs,
        }
    }

    /// Makes `env` this process's environment, for the rest of its life.
    ///
    /// # Safety
    ///
    /// No other thread may read or write the environment meanwhile: call it only in a child right
    /// after `fork`, where the calling thread is the only one.
    pub(crate) unsafe fn install(env: &Arc<ChildEnv>) {
        // Kept for the process's life: `environ` points into it from now on.
        let kept = Arc::clone(env);
        // SAFETY: the caller guarantees no other thread touches the environment; the array is
        // null-terminated, its strings are `NAME=value` C strings, and `kept` is never dropped,
        // so they outlive every reader.
        unsafe { environ = kept.ptrs.as_ptr() };
        std::mem::forget(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a forked child, an installed environment is what `std::env` reads; variables the parent
    /// had stay, a name it lacked gets the value, a name it had keeps its own, and `set_var`
    /// after the install works.
    #[test]
    fn a_child_reads_the_environment_made_for_it() {
        let env = Arc::new(ChildEnv::with_defaults(
            &["MULTIPROC_ENVIRON_TEST_NEW", "PATH"],
            "7",
        ));
        let path = std::env::var_os("PATH");
        let pid = crate::fork::fork_child(move || {
            // SAFETY: this is a child right after fork: the calling thread is its only one.
            unsafe { ChildEnv::install(&env) };
            let new = std::env::var("MULTIPROC_ENVIRON_TEST_NEW").ok();
            let kept = std::env::var_os("PATH") == path;
            // SAFETY: as above, one thread.
            unsafe { std::env::set_var("MULTIPROC_ENVIRON_TEST_SET", "x") };
            let set = std::env::var("MULTIPROC_ENVIRON_TEST_SET").ok();
            i32::from(new.as_deref() != Some("7"))
                + 2 * i32::from(!kept)
                + 4 * i32::from(set.as_deref() != Some("x"))
        })
        .unwrap();
        let status = crate::sys::wait_blocking(pid).unwrap();
        // Bit 1: the new name, 2: PATH, 4: set_var after the install.
        assert_eq!(status, crate::sys::ExitStatus::Exited(0));
        assert!(std::env::var_os("MULTIPROC_ENVIRON_TEST_NEW").is_none());
    }
}
