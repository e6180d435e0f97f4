//! Bodies that stream: byte limits are charged frame by frame as data
//! flows, and concurrency slots are held until the last byte has gone.
//! Nothing here buffers a body.

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
}

/// Every body the gateway sends or forwards.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A byte limit denied the rest of a body.
#[derive(Debug, thiserror::Error)]
#[error("byte limit exceeded")]
pub struct LimitExceeded;

/// Charges `n` bytes; `Err` is the denying decision.
pub type Charger = Box<dyn FnMut(u64) -> Result<(), Box<Decision>> + Send + Sync>;

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
    verdict: Verdict,
    stopped: bool,
    _held: Vec<Held>,
}

impl Metered {
    /// Wraps `inner`; `charge` (if any) is asked before each data frame.
    pub fn new(inner: ProxyBody, charge: Option<Charger>, verdict: Verdict, held: Vec<Held>) -> Self {
        Self {
            inner,
            charge,
            verdict,
            stopped: false,
            _held: held,
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(charge)) = (frame.data_ref(), this.charge.as_mut()) {
                    if let Err(d) = charge(data.len() as u64) {
                        *this.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(*d);
                        this.stopped = true;
                        return Poll::Ready(Some(Err(BoxError::new(LimitExceeded))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stopped || self.inner.is_end_stream()
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
