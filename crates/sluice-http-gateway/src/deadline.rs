//! One timer per connection for the limits a request meets one after the
//! other: the time to send a request head, then the upstream's time to
//! answer.
//!
//! A `tokio::time::timeout` per wait registers a timer in the runtime's
//! wheel and removes it again, under the wheel's lock, for every request;
//! with hyper's own head timer that was about 5 % of the gateway's
//! user-space CPU per proxied request (`perf`, docs/benchmarks.md, "HTTP
//! gateway"). This is nginx's approach instead: the timer stays armed, a
//! wait only notes when it must end, and the timer is moved when it fires
//! early — at most once per `floor` for a busy connection.
//!
//! Every wait ends on time: a wait whose end comes before the armed timer
//! moves it (as a `timeout` would). What keeps that rare is the floor: the
//! timer is never armed later than `now + floor`, so a wait of at least
//! `floor` that starts afterwards ends after it. When the timer fires
//! before a wait's end it is re-armed for `min(end, now + floor)`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The wait ran past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// A connection's timer (see the module's text).
pub(crate) struct Deadline {
    /// Made on the first wait: a connection that never waits costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The shortest limit this connection's waits use.
    floor: Duration,
}

impl Deadline {
    /// A timer for waits of at least `floor` (shorter ones still end on
    /// time, at the cost of moving the timer).
    pub(crate) fn new(floor: Duration) -> Self {
        Self { sleep: None, floor }
    }

    /// Runs `f` for at most `limit`.
    pub(crate) fn within<F: Future>(&mut self, limit: Duration, f: F) -> Until<'_, F> {
        self.until(Instant::now() + limit, f)
    }

    /// Runs `f` until `end` at the latest.
    ///
    /// A future of its own, not an `async fn`: `f` (an upstream exchange,
    /// a kilobyte) is then stored once instead of copied into each state
    /// of a generated one.
    pub(crate) fn until<F: Future>(&mut self, end: Instant, f: F) -> Until<'_, F> {
        let floor = self.floor;
        let sleep = match &mut self.sleep {
            Some(s) => {
                // Only a wait shorter than the floor (or one that began
                // before the timer's last arming) ends before it.
                if s.deadline() > end {
                    s.as_mut().reset(end);
                }
                s
            }
            none => none.insert(Box::pin(tokio::time::sleep_until(
                end.min(Instant::now() + floor),
            ))),
        };
        Until { f, sleep, end, floor }
    }
}

pin_project_lite::pin_project! {
    /// `f` under a connection's timer: see [`Deadline::until`].
    pub(crate) struct Until<'a, F> {
        #[pin]
        f: F,
        sleep: &'a mut Pin<Box<Sleep>>,
        end: Instant,
        floor: Duration,
    }
}

impl<F: Future> Future for Until<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.f.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        while this.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now >= *this.end {
                return Poll::Ready(Err(Elapsed));
            }
            // Early: the timer was armed by an earlier wait.
            this.sleep.as_mut().reset((*this.end).min(now + *this.floor));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_end_on_time_whatever_the_timer_was_armed_for() {
        let mut d = Deadline::new(Duration::from_secs(30));
        // A quick wait leaves the timer armed for 30 s from now.
        assert_eq!(d.within(Duration::from_secs(30), async { 1 }).await, Ok(1));
        tokio::time::advance(Duration::from_secs(20)).await;
        // This wait's end (t = 50 s) is after the armed timer (t = 30 s):
        // the timer fires early and is moved, the wait goes on.
        let start = Instant::now();
        let r = d
            .within(Duration::from_secs(30), std::future::pending::<()>())
            .await;
        assert_eq!(r, Err(Elapsed));
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        // A shorter limit than the floor still ends on time.
        let start = Instant::now();
        let r = d
            .within(Duration::from_secs(5), std::future::pending::<()>())
            .await;
        assert_eq!(r, Err(Elapsed));
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        // And a finished wait is not cut by an old arming.
        let r = d
            .within(Duration::from_secs(30), async {
                tokio::time::sleep(Duration::from_secs(29)).await;
                7
            })
            .await;
        assert_eq!(r, Ok(7));
    }
}
