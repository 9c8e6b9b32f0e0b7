//! The calls that wait for their results: `map` and its variants, `apply`, and `imap`.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Pool {
    /// `f` applied to every input, in input order: Python's `Pool.map`.
    ///
    /// Inputs are sent in chunks of [`chunksize`](PoolBuilder::chunksize) (default
    /// `ceil(len / (4 × processes))`, as Python's); several chunks are in flight per worker.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let lens = pool.map(|s: String| s.len(), ["a", "bb", "ccc"].map(String::from))?;
    /// assert_eq!(lens, vec![1, 2, 3]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Inputs are owned values
    ///
    /// Each input is encoded, sent to a worker and decoded there into a value that `f` owns, so
    /// `T` is `DeserializeOwned`: `String`, not `&str`; `Vec<u8>`, not `&[u8]`. A function of a
    /// borrowed type does not compile, with "implementation of `Deserialize` is not general
    /// enough" (the worker has no buffer of the parent's that the `&str` could point into):
    ///
    /// ```compile_fail
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// fn len(s: &str) -> usize { s.len() }
    /// pool.map(len, vec!["a", "bb"])?; // error: implementation of `Deserialize` is not general enough
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// The fix: take the owned type, and give owned inputs (or borrow inside `f`):
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// fn len(s: String) -> usize { s.len() }
    /// assert_eq!(pool.map(len, ["a", "bb"].map(String::from))?, vec![1, 2]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The first failed input's error, in input order ([`Error::TaskPanicked`],
    /// [`Error::WorkerDied`], [`Error::Timeout`]); use [`map_results`](Pool::map_results) for
    /// every input's outcome. [`Error::InvalidState`] on a closed or terminated pool,
    /// [`Error::Disconnected`] if it is terminated meanwhile, [`Error::TooLarge`] for an input
    /// chunk over the limit.
    pub fn map<F, T, R>(&self, f: F, items: impl IntoIterator<Item = T>) -> Result<Vec<R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        let plan = Plan::of_fn::<F, T, R>();
        self.run_values(plan, self.inputs(items, None)?)
    }

    /// Like [`map`](Pool::map), but every input's own `Result`: one failure does not hide the
    /// other results.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let out = pool.map_results(|x: u32| if x == 2 { panic!("two") } else { x }, 0..4)?;
    /// assert!(out[2].as_ref().unwrap_err().panic().unwrap().message.contains("two"));
    /// assert_eq!(*out[3].as_ref().unwrap(), 3);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The outer error is the pool's: closed, terminated, or an input chunk too large.
    pub fn map_results<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<Result<R>>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        let plan = Plan::of_fn::<F, T, R>();
        self.run_results(plan, self.inputs(items, None)?)
    }

    /// `f(a, b, …)` for every tuple `(a, b, …)` of 1 to 6 fields: Python's `Pool.starmap`.
    /// `f` is any function of that many arguments ([`StarFn`]); closures need their argument
    /// types written out.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// fn pow(base: u64, exp: u32) -> u64 { base.pow(exp) }
    /// assert_eq!(pool.starmap(pow, vec![(2, 3), (3, 2)])?, vec![8, 9]);
    ///
    /// fn clamp(x: i32, lo: i32, hi: i32) -> i32 { x.clamp(lo, hi) }
    /// assert_eq!(pool.starmap(clamp, [(5, 0, 3), (-1, 0, 3)])?, vec![3, 0]);
    ///
    /// let labels = pool.starmap(|n: u8| format!("#{n}"), [(1,), (2,)])?;
    /// assert_eq!(labels, ["#1", "#2"]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Pool::map).
    pub fn starmap<F, Args, R>(&self, f: F, items: impl IntoIterator<Item = Args>) -> Result<Vec<R>>
    where
        F: StarFn<Args, Output = R> + Copy + Send + 'static,
        Args: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        assert_zst::<F>();
        let plan = Plan::new(
            fnref::call_star::<F, Args, R>,
            fnref::item_ends::<Args>,
            None,
        );
        self.run_values(plan, self.inputs(items, None)?)
    }

    /// [`map`](Pool::map) with chunks of `chunksize` inputs for this call only (Python's
    /// `Pool.map(f, xs, chunksize)`); the pool's own chunk size
    /// ([`set_chunksize`](Pool::set_chunksize)) is left as it is for other calls.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let squares = pool.map_chunked(|x: u64| x * x, 0..1000, 1)?; // one input per task
    /// assert_eq!(squares[999], 998_001);
    /// assert!(pool.map_chunked(|x: u64| x, 0..10, 0).is_err());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a `chunksize` of 0; otherwise as [`map`](Pool::map).
    pub fn map_chunked<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        if chunksize == 0 {
            return Err(Error::invalid_arg("chunksize", 0, "must be at least 1"));
        }
        let _ = f;
        assert_zst::<F>();
        let mut plan = Plan::of_fn::<F, T, R>();
        plan.chunksize = Some(chunksize);
        self.run_values(plan, self.inputs(items, Some(chunksize))?)
    }

    /// `f(&ctx, x)` for every input: what a capturing closure would do. `ctx` is encoded once
    /// and sent once to each worker that runs part of this call.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let offsets = vec![10u64, 20, 30];
    /// let out = pool.map_with(&offsets, |o: &Vec<u64>, i: usize| o[i] + 1, 0..3)?;
    /// assert_eq!(out, vec![11, 21, 31]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Pool::map); [`Error::TooLarge`] for a context over the limit.
    pub fn map_with<C, F, T, R>(
        &self,
        ctx: &C,
        f: F,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>>
    where
        C: Serialize + DeserializeOwned + 'static,
        F: Fn(&C, T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        assert_zst::<F>();
        let plan = Plan::new(
            fnref::call_with::<F, C, T, R>,
            fnref::item_ends::<T>,
            Some(self.encode_ctx(ctx)?),
        );
        self.run_values(plan, self.inputs(items, None)?)
    }

    /// `f(x)` in a worker, waiting for the result: Python's `Pool.apply`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// assert_eq!(pool.apply(|x: u64| x * x, 12)?, 144);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The task's error, as for [`map`](Pool::map).
    pub fn apply<F, T, R>(&self, f: F, x: T) -> Result<R>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        let plan = Plan::of_fn::<F, T, R>();
        self.run_values(plan, self.inputs([x], None)?)?
            .pop()
            .ok_or_else(terminated)
    }

    /// `f(&ctx, x)` in a worker, waiting for the result.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let greeting = "hello".to_string();
    /// let s = pool.apply_with(&greeting, |g: &String, name: String| format!("{g} {name}"), "you".into())?;
    /// assert_eq!(s, "hello you");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map_with`](Pool::map_with).
    pub fn apply_with<C, F, T, R>(&self, ctx: &C, f: F, x: T) -> Result<R>
    where
        C: Serialize + DeserializeOwned + 'static,
        F: Fn(&C, T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.map_with(ctx, f, [x])?.pop().ok_or_else(terminated)
    }

    /// An iterator of `f(x)` in input order, pulling `items` lazily with a bounded number of
    /// inputs in flight: an endless input works in flat memory (Python's `imap` reads its whole
    /// input first). Default chunksize 1.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let firsts: Vec<u64> = pool
    ///     .imap(|x: u64| x * x, 0..)? // endless input
    ///     .take(5)
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(firsts, vec![0, 1, 4, 9, 16]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] on a closed or terminated pool; each item is the input's own
    /// `Result`.
    pub fn imap<F, T, R, I>(&self, f: F, items: I) -> Result<IMap<'_, I::IntoIter, R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        self.imap_impl(f, items, true)
    }

    /// Like [`imap`](Pool::imap), but results come as they finish, not in input order.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let mut v: Vec<u64> = pool.imap_unordered(|x: u64| x + 1, 0..10)?.collect::<Result<_, _>>()?;
    /// v.sort();
    /// assert_eq!(v, (1..11).collect::<Vec<_>>());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`imap`](Pool::imap).
    pub fn imap_unordered<F, T, R, I>(&self, f: F, items: I) -> Result<IMap<'_, I::IntoIter, R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        self.imap_impl(f, items, false)
    }

    fn imap_impl<F, T, R, I>(
        &self,
        _f: F,
        items: I,
        ordered: bool,
    ) -> Result<IMap<'_, I::IntoIter, R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        let chunksize = self.chunksize_for(None);
        let plan = Plan::of_fn::<F, T, R>();
        driver::ensure(&self.shared)?;
        let job = self.open()?.new_job(plan.fn_ref, plan.ends, None, None);
        let mut imap = IMap {
            pool: self,
            job,
            chunks: Chunker::new(items.into_iter(), chunksize, self.limit),
            ordered,
            window: (self.processes * chunksize * 32).max(64),
            next_out: 0,
            yielded: 0,
            buffer: Default::default(),
            ready: Default::default(),
            aborted: false,
            fused: false,
        };
        // The first window of inputs runs in the background until the first `next`.
        imap.start()?;
        Ok(imap)
    }
}
