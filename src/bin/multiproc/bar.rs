//! Progress displays: the [`Progress`] the runner tells of each job that ends, and the bar.

/// A progress display, told of each job that ends.
pub(crate) trait Progress {
    /// One more job ended.
    fn tick(&mut self);
    /// The number of jobs this run will report, once the input has ended.
    fn total(&mut self, jobs: u64);
    /// Runs `f` (printing) with the display out of the way.
    fn suspend(&mut self, f: &mut dyn FnMut());
    /// The run is over.
    fn finish(&mut self);
}

/// No progress display.
#[derive(Debug)]
pub(crate) struct NoProgress;

impl Progress for NoProgress {
    fn tick(&mut self) {}
    fn total(&mut self, _: u64) {}
    fn suspend(&mut self, f: &mut dyn FnMut()) {
        f()
    }
    fn finish(&mut self) {}
}

/// The progress bar (indicatif) with ETA, on stderr: `--bar`, or by default when stderr is a
/// terminal (so it is silent in batch jobs).
#[derive(Debug)]
pub(crate) struct Bar(indicatif::ProgressBar);

impl Bar {
    /// A bar for `len` jobs; a counter until the total is known (streamed input).
    pub(crate) fn new(len: Option<u64>) -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(len, indicatif::ProgressDrawTarget::stderr());
        let mut b = Bar(bar);
        match len {
            Some(_) => b.with_total_style(),
            None => {
                if let Ok(style) =
                    indicatif::ProgressStyle::with_template("{elapsed_precise} {pos} jobs done")
                {
                    b.0.set_style(style);
                }
            }
        }
        b
    }

    fn with_total_style(&mut self) {
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} jobs, ETA {eta}",
        ) {
            self.0.set_style(style);
        }
    }
}

impl Progress for Bar {
    fn tick(&mut self) {
        self.0.inc(1);
    }
    fn total(&mut self, jobs: u64) {
        if self.0.length().is_none() {
            self.0.set_length(jobs);
            self.with_total_style();
        }
    }
    fn suspend(&mut self, f: &mut dyn FnMut()) {
        self.0.suspend(f)
    }
    fn finish(&mut self) {
        self.0.finish();
    }
}
