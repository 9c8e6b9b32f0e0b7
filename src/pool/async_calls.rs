//! The calls that return at once: `apply_async`, `map_async`, `starmap_async`.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Pool {
    fn submit_async<R, T>(&self, plan: Plan, items: Vec<T>, sink: Sink) -> Result<()>
    where
        T: Serialize + DeserializeOwned,
    {
        let n = items.len();
        let chunksize = self.chunksize_for(Some(n));
        let mut chunks = Chunker::from_vec(items, chunksize, self.limit, Vec::new());
        let mut tasks = Vec::new();
        while let Some(t) = chunks.next_task(0, usize::MAX)? {
            tasks.push(t);
        }
        driver::ensure(&self.shared)?;
        let mut core = self.open()?;
        let job = core.new_job(plan.fn_ref, plan.ends, plan.ctx, Some(sink));
        for t in tasks {
            core.submit(Task { job, ..t });
        }
        // Hand the tasks to the workers now; the answers are read by the next caller.
        core.drive(Some(Instant::now()))?;
        let deferred = core.take_deferred();
        drop(core);
        // The driver thread reads the answers (and runs the callbacks) from now on.
        self.shared.driver.notify();
        run_deferred(deferred);
        let _ = std::marker::PhantomData::<R>;
        Ok(())
    }

    /// Starts `f(x)` in a worker and returns at once: Python's `Pool.apply_async`. Attach
    /// callbacks with [`AsyncResult::callback`] and [`AsyncResult::error_callback`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let results: Vec<_> = (0..4u64)
    ///     .map(|x| pool.apply_async(|x: u64| x * 10, x))
    ///     .collect::<Result<_, _>>()?;
    /// let values: Vec<u64> = results.into_iter().map(|r| r.get()).collect::<Result<_, _>>()?;
    /// assert_eq!(values, vec![0, 10, 20, 30]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] on a closed or terminated pool; the task's own error comes from
    /// [`AsyncResult::get`].
    pub fn apply_async<F, T, R>(&self, f: F, x: T) -> Result<AsyncResult<R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        assert_zst::<F>();
        let state = AsyncState::<R>::new();
        let st = state.clone();
        let sink: Sink = Box::new(move |ev, deferred| {
            let mut res = None;
            match ev {
                Event::Done(done) => done.decode::<R>(&mut |_: usize, r: Result<R>| res = Some(r)),
                Event::Failed { error, .. } => res = Some(Err(error)),
                Event::Aborted => res = Some(Err(terminated())),
            }
            st.complete(res.unwrap_or_else(|| Err(terminated())), deferred);
            true
        });
        let plan = Plan::of_fn::<F, T, R>();
        self.submit_async::<R, T>(plan, vec![x], sink)?;
        Ok(AsyncResult {
            shared: self.shared.clone(),
            state,
        })
    }

    /// Starts a [`map`](Pool::map) and returns at once: Python's `Pool.map_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let r = pool.map_async(|x: u32| x + 1, 0..100)?;
    /// assert_eq!(r.get()?.len(), 100);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Pool::apply_async); the value is the first failed input's error.
    pub fn map_async<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        let plan = Plan::of_fn::<F, T, R>();
        self.run_async(plan, items.into_iter().collect())
    }

    /// Starts a [`starmap`](Pool::starmap) and returns at once: Python's `Pool.starmap_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let r = pool.starmap_async(|a: u32, b: u32| a * b, [(2, 3), (4, 5)])?;
    /// assert_eq!(r.get()?, vec![6, 20]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map_async`](Pool::map_async).
    pub fn starmap_async<F, Args, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: StarFn<Args, Output = R> + Copy + Send + 'static,
        Args: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        assert_zst::<F>();
        let plan = Plan::new(
            fnref::call_star::<F, Args, R>,
            fnref::item_ends::<Args>,
            None,
        );
        self.run_async(plan, items.into_iter().collect())
    }

    /// Submits a map-like job over `items` and returns its [`AsyncResult`] (all outcomes, in
    /// order; the first failed input's error if any failed).
    fn run_async<T, R>(&self, plan: Plan, items: Vec<T>) -> Result<AsyncResult<Vec<R>>>
    where
        T: Serialize + DeserializeOwned,
        R: DeserializeOwned + Send + 'static,
    {
        let n = items.len();
        let state = AsyncState::<Vec<R>>::new();
        let st = state.clone();
        let mut out: Vec<Option<Result<R>>> = (0..n).map(|_| None).collect();
        let mut got = 0usize;
        let sink: Sink = Box::new(move |ev, deferred| {
            match ev {
                Event::Done(done) => done.decode::<R>(&mut |i: usize, r: Result<R>| {
                    got += usize::from(out[i].is_none());
                    out[i] = Some(r);
                }),
                Event::Failed { index, error } => {
                    got += usize::from(out[index].is_none());
                    out[index] = Some(Err(error));
                }
                Event::Aborted => {
                    st.complete(Err(terminated()), deferred);
                    return true;
                }
            }
            if got < n {
                return false;
            }
            let all = std::mem::take(&mut out)
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(terminated())))
                .collect();
            st.complete(all, deferred);
            true
        });
        if n == 0 {
            let mut deferred = Vec::new();
            state.complete(Ok(Vec::new()), &mut deferred);
            run_deferred(deferred);
        } else {
            self.submit_async::<R, T>(plan, items, sink)?;
        }
        Ok(AsyncResult {
            shared: self.shared.clone(),
            state,
        })
    }
}
