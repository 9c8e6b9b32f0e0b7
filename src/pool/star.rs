//! [`StarFn`]: a function called with the fields of a tuple, for [`Pool::starmap`] with 1 to 6
//! arguments (Python's `starmap` unpacks any tuple).
//!
//! [`Pool::starmap`]: crate::Pool::starmap

/// A function of `N` arguments called with an `N`-tuple of them (`N` from 1 to 6): what
/// [`Pool::starmap`](crate::Pool::starmap) and [`Pool::starmap_async`](crate::Pool::starmap_async)
/// accept. Implemented for every `Fn(A) -> R`, `Fn(A, B) -> R`, …, `Fn(A, B, C, D, E, G) -> R`
/// with `Args = (A,)`, `(A, B)`, …; you never implement it yourself.
///
/// # Examples
///
/// ```
/// use multiproc::StarFn;
///
/// fn volume(x: u32, y: u32, z: u32) -> u32 { x * y * z }
/// assert_eq!(volume.call_star((2, 3, 4)), 24);
/// ```
pub trait StarFn<Args> {
    /// What the function returns.
    type Output;

    /// Calls the function with the fields of `args` as its arguments.
    fn call_star(&self, args: Args) -> Self::Output;
}

macro_rules! star_fn {
    ($($arg:ident),+) => {
        impl<Func, Out, $($arg),+> StarFn<($($arg,)+)> for Func
        where
            Func: Fn($($arg),+) -> Out,
        {
            type Output = Out;

            #[allow(non_snake_case)]
            fn call_star(&self, ($($arg,)+): ($($arg,)+)) -> Out {
                self($($arg),+)
            }
        }
    };
}

star_fn!(A);
star_fn!(A, B);
star_fn!(A, B, C);
star_fn!(A, B, C, D);
star_fn!(A, B, C, D, E);
star_fn!(A, B, C, D, E, G);
