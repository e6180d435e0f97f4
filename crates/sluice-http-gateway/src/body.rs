//! Bodies that stream: byte limits are charged frame by frame as data
//! flows, and concurrency slots are held until the last byte has gone.
//! Nothing here buffers a body.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use sluice_core::Decision;

/// An error inside a body (the upstream's, or a byte limit's). A concrete
/// type, not a boxed trait object: hyper's `Into<Box<dyn Error>>` bounds
/// then hold without higher-ranked lifetime trouble in async code.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BoxError(Box<dyn std::error::Error + Send + Sync>);

impl BoxError {
    /// Wraps any error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }

    /// Whether a `T` is this error or anywhere in its chain of sources
    /// (through hyper's errors, I/O errors and other `BoxError`s, whose
    /// `source` skips the error they wrap).
    pub fn caused_by<T: std::error::Error + 'static>(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&*self.0);
        while let Some(e) = cur {
            let wrapped = e
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .map(|inner| BoxError::is_or_wraps::<T>(inner));
            if e.is::<T>()
                || e.downcast_ref::<BoxError>().is_some_and(BoxError::caused_by::<T>)
                || wrapped == Some(true)
            {
                return true;
            }
            cur = e.source();
        }
        false
    }

    fn is_or_wraps<T: std::error::Error + 'static>(
        e: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> bool {
        e.is::<T>() || e.downcast_ref::<BoxError>().is_some_and(BoxError::caused_by::<T>)
    }
}

/// The client's request body could not be read to its end: badly framed
/// chunks, or the connection ended (or failed) before the framing said
/// the body would. Carried through the upstream exchange's error, so that
/// the failure is answered and counted as the client's (400,
/// `client_error`), not as the upstream's 502 (`crate::framing`).
#[derive(Debug, thiserror::Error)]
#[error("the client's request body is malformed or incomplete")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// The client sent nothing of its request body for this long.
#[derive(Debug, thiserror::Error)]
#[error("request body idle for more than {0:?}")]
pub struct BodyTimeout(pub std::time::Duration);

/// A body's silence timer: armed when the body goes quiet, disarmed by a
/// frame, and made on the first silence only, so a body that is all there
/// (most answers) costs no timer at all.
#[derive(Debug)]
pub(crate) struct IdleTimer {
    limit: std::time::Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    pub(crate) fn new(limit: std::time::Duration) -> Self {
        Self {
            limit,
            deadline: None,
            armed: false,
        }
    }

    /// `polled` (a body's frame, or its silence) with the timer applied:
    /// a frame disarms it, a silence arms it and fails once it has lasted
    /// `limit`.
    pub(crate) fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<Option<Result<T, BoxError>>>,
    ) -> Poll<Option<Result<T, BoxError>>> {
        match polled {
            Poll::Pending => self.poll_silent(cx).map(|e| Some(Err(e))),
            ready => {
                self.armed = false;
                ready
            }
        }
    }

    /// The body is silent: the error once it has been for `limit`.
    fn poll_silent(&mut self, cx: &mut Context<'_>) -> Poll<BoxError> {
        if !self.armed {
            self.armed = true;
            let at = tokio::time::Instant::now() + self.limit;
            match &mut self.deadline {
                Some(d) => d.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        match self.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(BoxError::new(BodyTimeout(self.limit))),
            _ => Poll::Pending,
        }
    }
}

/// A body that fails with [`BodyTimeout`] when it sends nothing for
/// `limit`: a client trickling an upload (nginx's `client_body_timeout`),
/// or an upstream answer gone silent, cannot hold its slots and an
/// upstream connection for ever.
pub struct IdleLimited {
    inner: ProxyBody,
    timer: IdleTimer,
}

impl IdleLimited {
    /// Wraps `inner`.
    pub fn new(inner: ProxyBody, limit: std::time::Duration) -> Self {
        Self {
            inner,
            timer: IdleTimer::new(limit),
        }
    }
}

impl Body for IdleLimited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.timer.watch(cx, polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Every body the gateway sends or forwards.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A byte limit denied the rest of a body.
#[derive(Debug, thiserror::Error)]
#[error("byte limit exceeded")]
pub struct LimitExceeded;

/// Charges `n` bytes; `Err` is the denying decision.
///
/// A future, not a call: on a Redis store the charge is a round trip,
/// awaited while the body waits, and the worker's thread serves its other
/// connections meanwhile (a memory store's is ready at once).
pub type Charger = Box<dyn FnMut(u64) -> Charge + Send + Sync>;

/// One charge in progress ([`Charger`]).
pub type Charge = Pin<Box<dyn std::future::Future<Output = Result<(), Box<Decision>>> + Send>>;

/// Something released when dropped (a concurrency slot).
pub type Held = Box<dyn Send + Sync>;

/// Where a metered body leaves the decision that stopped it, so the handler
/// can answer in the protocol's form instead of a bare 502.
pub type Verdict = Arc<Mutex<Option<Decision>>>;

/// A body that charges each data frame before passing it on, and holds
/// slots until it ends.
pub struct Metered {
    inner: ProxyBody,
    charge: Option<Charger>,
    /// A frame waiting for its charge's answer. In a mutex only so that
    /// the body is `Sync` (as `BoxBody` asks) without the future having to
    /// be: it is reached through `get_mut`, never locked.
    pending: Mutex<Option<(Frame<Bytes>, Charge)>>,
    /// Where a denial is left (none when nobody reads it).
    verdict: Option<Verdict>,
    stopped: bool,
    _held: Vec<Held>,
}

impl Metered {
    /// Wraps `inner`; `charge` (if any) is asked before each data frame.
    pub fn new(inner: ProxyBody, charge: Option<Charger>, verdict: Option<Verdict>, held: Vec<Held>) -> Self {
        Self {
            inner,
            charge,
            pending: Mutex::new(None),
            verdict,
            stopped: false,
            _held: held,
        }
    }

    /// `frame` once its charge has answered `r`.
    fn charged(
        &mut self,
        frame: Frame<Bytes>,
        r: Result<(), Box<Decision>>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match r {
            Ok(()) => Poll::Ready(Some(Ok(frame))),
            Err(d) => {
                if let Some(v) = &self.verdict {
                    *v.lock().unwrap_or_else(|p| p.into_inner()) = Some(*d);
                }
                self.stopped = true;
                Poll::Ready(Some(Err(BoxError::new(LimitExceeded))))
            }
        }
    }

    /// Boxed.
    pub fn boxed(self) -> ProxyBody {
        BoxBody::new(self)
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.stopped {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let pending = this
            .pending
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, charge)) = pending {
            let r = std::task::ready!(charge.as_mut().poll(cx));
            if let Some((frame, _)) = pending.take() {
                return this.charged(frame, r);
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(charger)) = (frame.data_ref(), this.charge.as_mut()) {
                    let mut charge = charger(data.len() as u64);
                    return match charge.as_mut().poll(cx) {
                        Poll::Ready(r) => this.charged(frame, r),
                        Poll::Pending => {
                            *this
                                .pending
                                .get_mut()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((frame, charge));
                            Poll::Pending
                        }
                    };
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        // The lock is never held (see `pending`): this does not wait.
        let waiting = self.pending.lock().map_or(true, |p| p.is_some());
        self.stopped || (!waiting && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(b.into())
        .map_err(|e| match e {})
        .boxed()
}

/// No body.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new().map_err(|e| match e {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A client that sent its headers and then nothing.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_times_out_and_a_flowing_one_does_not() {
        let start = tokio::time::Instant::now();
        let mut b = IdleLimited::new(BoxBody::new(Silent), Duration::from_secs(60));
        let e = b.frame().await.unwrap().unwrap_err();
        assert!(e.caused_by::<BodyTimeout>());
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        // Frames keep it alive; the end is the end.
        let mut b = IdleLimited::new(full("abc"), Duration::from_secs(60));
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "abc");
        assert!(b.frame().await.is_none());
        // Found through other errors' sources too.
        let wrapped = BoxError::new(std::io::Error::other(BoxError::new(BodyTimeout(Duration::ZERO))));
        assert!(wrapped.caused_by::<BodyTimeout>());
        assert!(!BoxError::new(LimitExceeded).caused_by::<BodyTimeout>());
    }

    /// A frame waits for its charge's answer (here, on the charge's second
    /// poll): frames come out in order, none before its charge allowed it,
    /// and the first refused one ends the body with the denial left for
    /// the handler.
    #[tokio::test]
    async fn each_frame_waits_for_its_charge() {
        let parts = ["ab", "cd", "ef", "gh"];
        let inner = BoxBody::new(Frames(
            parts
                .iter()
                .map(|p| Frame::data(Bytes::from_static(p.as_bytes())))
                .collect(),
        ));
        let charged = Arc::new(Mutex::new(Vec::new()));
        let seen = charged.clone();
        let charger: Charger = Box::new(move |n| {
            let seen = seen.clone();
            let mut polled = false;
            Box::pin(std::future::poll_fn(move |cx| {
                if !polled {
                    polled = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.push(n);
                if seen.len() == 3 {
                    let mut d = Decision::allow();
                    d.allowed = false;
                    return Poll::Ready(Err(Box::new(d)));
                }
                Poll::Ready(Ok(()))
            }))
        });
        let verdict: Verdict = Arc::new(Mutex::new(None));
        let mut b = Metered::new(inner, Some(charger), Some(verdict.clone()), Vec::new());
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "cd");
        assert!(!b.is_end_stream());
        let e = b.frame().await.unwrap().unwrap_err();
        assert!(e.caused_by::<LimitExceeded>());
        assert!(b.frame().await.is_none());
        assert_eq!(*charged.lock().unwrap(), [2, 2, 2]);
        assert!(verdict.lock().unwrap().as_ref().is_some_and(|d| !d.allowed));
    }

    /// A body of frames all ready at once.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }
}
