//! How a task names the function it runs: a *trampoline* identified by its offset from an anchor.
//!
//! The user's function `F` is zero-sized (a fn item or a closure that captures nothing; checked at
//! compile time), so it has no bytes to send: its identity is its type. For every `(F, T, R)` the
//! compiler makes one monomorphized trampoline ([`call`], [`call_with`], [`call_star`]) that
//! conjures the `F`, decodes the inputs, calls it on each, and encodes the outcomes (in the
//! codecs of `T` and `R`: see `chunk`). A task carries
//! that trampoline's address as an offset from [`anchor`], a function of this crate.
//!
//! An offset rather than an address: a forked worker shares the parent's address space layout,
//! but a future backend whose workers are separate executions of the *same binary* (MPI ranks,
//! placed by ASLR at different bases) can still find the function, because distances inside one
//! binary's text do not change. The requirement is therefore: **parent and workers run the same
//! binary**. The worker checks that the target lands inside the executable mapping that holds
//! the anchor before it jumps, so a garbage offset is an error, not a wild jump.

use std::any::Any;
use std::ops::Range;
use std::sync::OnceLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RemotePanic;
use crate::wire::MAX_MESSAGE_BYTES;
use crate::{fdpass, panic};

use super::chunk::Codec;
use super::worker::Exec;

/// The signature of every trampoline: run the task whose `count` encoded inputs are in `input`,
/// appending one encoded [`ItemOut`] per input to `out`. `Err` fails the whole task.
pub(crate) type Trampoline = fn(&mut Exec<'_>, &[u8], u32, &mut Vec<u8>) -> Result<(), String>;

/// The outcome of one input, as it travels back: the value, or why there is none.
pub(crate) type ItemOut<R> = Result<R, ItemError>;

/// Why one input has no value.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum ItemError {
    /// The function panicked on it.
    Panicked(RemotePanic),
    /// Its result could not be encoded.
    Codec(String),
    /// Its encoded result was larger than the limit.
    TooLarge(u64),
}

/// The fixed point that trampoline offsets are measured from. Never inlined, so it has an address
/// of its own in the binary's text.
#[inline(never)]
pub(crate) fn anchor() -> u64 {
    std::hint::black_box(0x6d75_6c74_6970_726f)
}

fn anchor_addr() -> usize {
    anchor as fn() -> u64 as usize
}

/// A function reference that survives a change of load address: offset from [`anchor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FnRef(i64);

impl FnRef {
    /// The reference to `t`.
    pub(crate) fn of(t: Trampoline) -> FnRef {
        FnRef((t as usize as i64).wrapping_sub(anchor_addr() as i64))
    }

    /// The raw offset, for the wire.
    pub(crate) fn offset(self) -> i64 {
        self.0
    }

    /// A reference read from the wire.
    pub(crate) fn from_offset(offset: i64) -> FnRef {
        FnRef(offset)
    }

    /// The trampoline this refers to, after checking that it lies in this binary's text.
    pub(crate) fn resolve(self) -> Result<Trampoline, String> {
        let addr = self.checked_addr()?;
        // SAFETY: `addr` is in the executable mapping of this binary. Offsets are made only by
        // `FnRef::of` from a `Trampoline` in a process running the same binary (the documented
        // requirement), where distances between functions of the binary are fixed, so `addr` is
        // the entry of a function with exactly the `Trampoline` signature.
        Ok(unsafe { std::mem::transmute::<*const (), Trampoline>(addr as *const ()) })
    }

    /// The reference to a plain function (an initializer given as a `fn()`, or the trampoline
    /// of [`init_ref`]).
    pub(crate) fn of_init(t: fn()) -> FnRef {
        FnRef((t as usize as i64).wrapping_sub(anchor_addr() as i64))
    }

    /// The initializer trampoline this refers to, after checking that it lies in this binary's
    /// text.
    pub(crate) fn resolve_init(self) -> Result<fn(), String> {
        let addr = self.checked_addr()?;
        // SAFETY: as in `resolve`: offsets of initializers are made only by `init_ref` from a
        // `fn()` in a process running the same binary, so `addr` is the entry of a `fn()`.
        Ok(unsafe { std::mem::transmute::<*const (), fn()>(addr as *const ()) })
    }

    fn checked_addr(self) -> Result<usize, String> {
        let addr = (anchor_addr() as i64).wrapping_add(self.0) as usize;
        if !text_range().contains(&addr) {
            return Err(format!(
                "function offset {:#x} points outside this binary's code: the parent and the \
                 worker must run the same binary",
                self.0
            ));
        }
        Ok(addr)
    }
}

/// The reference of the initializer `F` when it can travel by offset: when it is zero-sized (a
/// fn item or a closure that captures nothing); `None` for a closure that captures.
pub(crate) fn init_ref<F: Fn() + Send + Sync + 'static>() -> Option<FnRef> {
    (std::mem::size_of::<F>() == 0).then(|| FnRef::of_init(run_init::<F>))
}

/// The initializer trampoline: conjures the zero-sized `F` and calls it.
fn run_init<F: Fn() + Send + Sync + 'static>() {
    // Made only by `init_ref`, for a zero-sized `F`; checked again before conjuring.
    assert_eq!(std::mem::size_of::<F>(), 0, "an initializer that captures");
    // SAFETY: `F` is zero-sized (checked above), so a value of it has no bytes to initialize.
    // The zero-sized types implementing the `Fn` traits on stable Rust are fn items and
    // closures that capture only zero-sized values; the parent held a value of `F` (it passed
    // one to `PoolBuilder::initializer`), so the type is inhabited.
    let f = unsafe { std::mem::zeroed::<F>() };
    f()
}

/// The address range of the executable mapping that holds [`anchor`] (read once from
/// `/proc/self/maps`); without `/proc`, a window of 1 GiB around the anchor. The pool reads it
/// before it forks, so that forked workers inherit it instead of each parsing the maps again.
pub(crate) fn text_range() -> Range<usize> {
    static RANGE: OnceLock<Range<usize>> = OnceLock::new();
    RANGE
        .get_or_init(|| {
            let a = anchor_addr();
            let from_maps = std::fs::read_to_string("/proc/self/maps")
                .ok()
                .and_then(|maps| {
                    maps.lines().find_map(|line| {
                        let mut parts = line.split_ascii_whitespace();
                        let (lo, hi) = parts.next()?.split_once('-')?;
                        let perms = parts.next()?;
                        let lo = usize::from_str_radix(lo, 16).ok()?;
                        let hi = usize::from_str_radix(hi, 16).ok()?;
                        (perms.contains('x') && (lo..hi).contains(&a)).then_some(lo..hi)
                    })
                });
            from_maps.unwrap_or(a.saturating_sub(1 << 30)..a.saturating_add(1 << 30))
        })
        .clone()
}

/// Holds the one compile-time check that a pool's function type is zero-sized. Every entry
/// point (`assert_zst` in mod.rs) and `conjure` name this same constant, so a capturing closure
/// gives one error, with the hint, instead of one per place that checks.
pub(crate) struct ZeroSized<F>(std::marker::PhantomData<F>);

impl<F> ZeroSized<F> {
    pub(crate) const CHECK: () = assert!(
        std::mem::size_of::<F>() == 0,
        "Pool's function must be a fn item or a closure that captures nothing: \
         pass what it would capture with map_with(&ctx, f, items)"
    );
}

/// A value of the zero-sized function type `F`.
fn conjure<F: Copy>() -> F {
    let () = ZeroSized::<F>::CHECK;
    // SAFETY: `F` is zero-sized (asserted above at compile time), so a value of it has no bytes
    // to initialize. The only zero-sized types implementing the `Fn` traits on stable Rust are fn
    // items and closures that capture nothing (the traits cannot be implemented by hand), and
    // those have no validity invariant beyond their (empty) bytes. The parent held a real value
    // of `F` when it made the task, so the type is inhabited.
    // `zeroed` writes nothing for a zero-sized type.
    unsafe { std::mem::zeroed::<F>() }
}

/// A postcard output that appends to a borrowed `Vec` (which survives an encoding error, unlike
/// `to_extend`'s, and is faster than `to_io`'s byte-by-byte writes).
pub(crate) struct Append<'a>(pub(crate) &'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Most pieces are varints or numbers of at most 10 bytes. `extend_from_slice` calls
        // `memcpy` for a length unknown here; the iterator's copy loop is inlined, and measured
        // 1.2x faster on 8-byte pieces (80 MB of f64) and no slower on varints.
        self.0.extend(data.iter().copied());
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the encoding of `outcome` to `out` (its value in `codec`, the codec of `R`: see
/// `chunk`); an encoding failure or an oversized value becomes that item's error instead.
#[inline]
pub(crate) fn push_outcome<R: Serialize>(codec: Codec, outcome: &ItemOut<R>, out: &mut Vec<u8>) {
    let start = out.len();
    // postcard's encoding of the `Result`: variant 0 then the value, or 1 then the error.
    let res = match outcome {
        Ok(v) => {
            out.push(0);
            codec.encode(v, out)
        }
        Err(e) => {
            out.push(1);
            postcard::serialize_with_flavor(e, Append(&mut *out))
        }
    };
    let size = out.len() - start;
    let err = match res {
        Ok(()) if size <= MAX_MESSAGE_BYTES => return,
        Ok(()) => ItemError::TooLarge(size as u64),
        Err(e) => ItemError::Codec(e.to_string()),
    };
    out.truncate(start);
    // A unit-like error always encodes.
    let _ = postcard::serialize_with_flavor(&ItemOut::<()>::Err(err), Append(out));
}

fn run_items<T: DeserializeOwned, R: Serialize + DeserializeOwned>(
    ex: &mut Exec<'_>,
    input: &[u8],
    count: u32,
    out: &mut Vec<u8>,
    f: impl FnMut(&mut Exec<'_>, T) -> R,
) -> Result<(), String> {
    let (inputs, outcomes) = (Codec::of::<T>(), Codec::of::<R>());
    if let (Codec::Fixed(input_size), Codec::Fixed(size)) = (inputs, outcomes) {
        // Plain data carries no descriptor: no descriptor frame to decode or encode in.
        out.reserve(count as usize * (size + 1));
        return run_plain(ex, input, count, out, (input_size, outcomes), f);
    }
    // The outcomes are encoded in one descriptor frame for the task (each is dropped right
    // after, so a `PodVec` in shared memory goes as it is); the caller's function runs outside
    // it, so that what it encodes itself cannot attach to the task's reply.
    let total = input.len();
    let mut f = f;
    let mut input = input;
    ex.encoding(|ex| {
        for i in 0..count {
            let (x, rest) = ex
                .decoding(|| inputs.take::<T>(input))
                .map_err(|e| format!("decoding input {i} of the task: {e}"))?;
            input = rest;
            ex.item_started(i);
            let outcome =
                fdpass::suspended(|| panic::catch(|| f(ex, x))).map_err(ItemError::Panicked);
            ex.item_done(i, total - input.len(), outcome, out, outcomes);
        }
        Ok(())
    })
}

/// [`run_items`] for plain-data inputs (of `input_size` bytes) and results (see `chunk`): no
/// descriptor frame, and the outcomes journaled as one run.
fn run_plain<T: DeserializeOwned, R: Serialize>(
    ex: &mut Exec<'_>,
    mut input: &[u8],
    count: u32,
    out: &mut Vec<u8>,
    (input_size, outcomes): (usize, Codec),
    mut f: impl FnMut(&mut Exec<'_>, T) -> R,
) -> Result<(), String> {
    for i in 0..count {
        let (x, rest) = Codec::Fixed(input_size)
            .take::<T>(input)
            .map_err(|e| format!("decoding input {i} of the task: {e}"))?;
        input = rest;
        ex.item_started(i);
        let outcome = panic::catch(|| f(ex, x)).map_err(ItemError::Panicked);
        ex.item_done_plain(i, input_size, outcome, out, outcomes);
    }
    Ok(())
}

/// The trampoline for `F: Fn(T) -> R`.
pub(crate) fn call<F, T, R>(
    ex: &mut Exec<'_>,
    input: &[u8],
    count: u32,
    out: &mut Vec<u8>,
) -> Result<(), String>
where
    F: Fn(T) -> R + Copy,
    T: DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    let f = conjure::<F>();
    run_items(ex, input, count, out, |_, x| f(x))
}

/// The trampoline for `F: Fn(A, B, …) -> R` over `(A, B, …)` inputs (1 to 6 fields).
pub(crate) fn call_star<F, Args, R>(
    ex: &mut Exec<'_>,
    input: &[u8],
    count: u32,
    out: &mut Vec<u8>,
) -> Result<(), String>
where
    F: super::StarFn<Args, Output = R> + Copy,
    Args: DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    let f = conjure::<F>();
    run_items(ex, input, count, out, |_, args: Args| f.call_star(args))
}

/// The trampoline for `F: Fn(&C, T) -> R`, with the context decoded once per worker and job.
pub(crate) fn call_with<F, C, T, R>(
    ex: &mut Exec<'_>,
    input: &[u8],
    count: u32,
    out: &mut Vec<u8>,
) -> Result<(), String>
where
    F: Fn(&C, T) -> R + Copy,
    C: DeserializeOwned + 'static,
    T: DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    let f = conjure::<F>();
    ex.ctx_decode(|bytes| {
        postcard::from_bytes::<C>(bytes)
            .map(|c| Box::new(c) as Box<dyn Any>)
            .map_err(|e| format!("decoding the context: {e}"))
    })?;
    run_items(ex, input, count, out, |ex, x| {
        let ctx = ex
            .ctx_ref()
            .and_then(|c| c.downcast_ref::<C>())
            .expect("context decoded above");
        f(ctx, x)
    })
}

/// Byte offsets of the ends of each of the `count` encoded `T`s in `bytes` (used to split a task
/// whose worker died).
pub(crate) fn item_ends<T: DeserializeOwned>(bytes: &[u8], count: u32) -> Option<Vec<usize>> {
    Codec::of::<T>().item_ends::<T>(bytes, count)
}
