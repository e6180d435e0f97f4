//! A small timing harness: warm-up, calibrated repetitions interleaved across
//! contenders, median ns/op.
//!
//! Contenders of one configuration run their repetitions in turn (A, B, C, D,
//! A, B, C, D, …), so a burst of load from someone else on this shared machine
//! hits all of them alike and the ratios between them stay meaningful.

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Something that makes decisions over a prepared per-thread key sequence.
pub trait Contender: Sync {
    /// Short name for the tables.
    fn name(&self) -> &'static str;
    /// Runs `ops` decisions on thread `t`'s key sequence starting at `start`;
    /// returns how many were allowed.
    fn run(&self, t: usize, start: usize, ops: usize) -> u64;
}

/// How long and how often to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Operations per thread in the warm-up (also the calibration run).
    pub warm_ops: usize,
    /// Target wall time of one repetition.
    pub rep: Duration,
    /// Timed repetitions per contender.
    pub reps: usize,
}

/// The measurements of one contender in one configuration.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Contender name.
    pub name: &'static str,
    /// Threads used.
    pub threads: usize,
    /// Per repetition: wall nanoseconds per operation per thread (a perfectly
    /// scaling contender shows the same figure at 1 and 2 threads).
    pub samples: Vec<f64>,
    /// Decisions made in the timed repetitions (all threads).
    pub ops: u64,
    /// Of those, allowed.
    pub allowed: u64,
}

impl Measured {
    /// Median ns/op per thread.
    pub fn median(&self) -> f64 {
        median(&self.samples)
    }

    /// Fastest repetition.
    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Slowest repetition.
    pub fn max(&self) -> f64 {
        self.samples.iter().copied().fold(0.0, f64::max)
    }

    /// Total decisions per second over all threads, in millions (from the median).
    pub fn mops(&self) -> f64 {
        self.threads as f64 * 1e3 / self.median()
    }
}

/// The median of a non-empty sample (0 for an empty one).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Runs `ops` decisions on each of `threads` threads at once; returns the wall
/// time from the common start to the last thread's end, and the allowed count.
pub fn run_once(c: &dyn Contender, threads: usize, start: usize, ops: usize) -> (Duration, u64) {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    c.run(t, start, ops)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let allowed: u64 = handles
            .into_iter()
            .map(|h| h.join().expect("a benchmark thread panicked"))
            .sum();
        (t0.elapsed(), allowed)
    })
}

/// Warms up and calibrates each contender, then runs their repetitions interleaved.
pub fn measure(contenders: &[&dyn Contender], threads: usize, plan: Plan) -> Vec<Measured> {
    let mut ops = Vec::with_capacity(contenders.len());
    for c in contenders {
        let (d, _) = run_once(*c, threads, 0, plan.warm_ops);
        let ns_per_op = (d.as_nanos() as f64 / plan.warm_ops as f64).max(0.1);
        let n = (plan.rep.as_nanos() as f64 / ns_per_op) as usize;
        ops.push(n.clamp(1_000, 1 << 27));
    }
    let mut out: Vec<Measured> = contenders
        .iter()
        .map(|c| Measured {
            name: c.name(),
            threads,
            samples: Vec::with_capacity(plan.reps),
            ops: 0,
            allowed: 0,
        })
        .collect();
    for rep in 0..plan.reps {
        for ((c, m), &n) in contenders.iter().zip(out.iter_mut()).zip(&ops) {
            let (d, allowed) = run_once(*c, threads, plan.warm_ops + rep * n, n);
            m.samples.push(d.as_nanos() as f64 / n as f64);
            m.ops += (n * threads) as u64;
            m.allowed += allowed;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
