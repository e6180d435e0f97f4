//! Copying bytes both ways, slowed by bandwidth budgets.
//!
//! Throttling pauses the *reader*: a chunk is read (never more than the
//! smallest budget's burst), its bytes are charged, and while the budget is
//! short the pump sleeps before writing it and before reading again. The
//! kernel's receive buffer fills, TCP's window closes, and the sender slows
//! down. At most one chunk per direction is held: nothing is dropped and
//! nothing queues without bound.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::gcra::{Gcra, Verdict};
use sluice_core::{Rate, Reason, Request, Side, Targets};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::clock::since;
use crate::metrics::{Direction, ListenerMetrics};

/// Largest read, throttled or not.
pub(crate) const CHUNK: usize = 16 * 1024;

/// One connection's budget in one direction: GCRA on tokio's clock.
#[derive(Debug)]
pub struct ConnBudget {
    gcra: Gcra,
    tat: u64,
    base: Instant,
}

impl ConnBudget {
    /// A full budget of `rate` (bytes).
    pub fn new(rate: Rate, base: Instant) -> Self {
        Self {
            gcra: rate.gcra(),
            tat: 0,
            base,
        }
    }

    /// The most bytes that can ever pass at once.
    pub fn burst(&self) -> u64 {
        self.gcra.burst()
    }

    /// Takes `n` bytes now, or says how long to wait first (nothing taken).
    pub fn take(&mut self, n: u64) -> Result<(), Duration> {
        match self.gcra.check(self.tat, since(self.base), n) {
            Verdict::Allow { new_tat } => {
                self.tat = new_tat;
                Ok(())
            }
            Verdict::Deny { retry_after } => Err(Duration::from_nanos(retry_after)),
            // Chunks are cut to the burst, so this is a bug; let it through
            // rather than stall the connection for ever.
            Verdict::Impossible => Ok(()),
        }
    }
}

/// The engine's byte limits shared by many connections (and across
/// instances with a shared store): `bandwidth` per address (and server) on
/// incoming listeners, `outgoing_bandwidth` per destination and globally on
/// the outgoing relay.
#[derive(Clone)]
pub(crate) struct IpBudget {
    pub app: sluice_server::App,
    pub side: Side,
    /// `bandwidth` or `outgoing_bandwidth`.
    pub action: &'static str,
    pub ip: Option<IpAddr>,
    /// The stream's server, for per-server `bandwidth` limits.
    pub server: Option<sluice_core::Target>,
}

/// Why a pump stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The client was banned or blocked while connected.
    Banned,
    /// Reading or writing failed.
    Io,
}

impl IpBudget {
    /// Charges `n` bytes, waiting as long as the limit says.
    async fn charge(&self, n: u64, waited: &mut Duration) -> Result<(), Stop> {
        let mut left = n;
        let mut piece = n;
        while left > 0 {
            let cost = piece.min(left);
            let req = Request {
                side: self.side,
                action: self.action,
                targets: Targets {
                    ip: self.ip,
                    server: self.server.clone(),
                    ..Targets::default()
                },
                cost,
            };
            // A failing store never stalls traffic: bandwidth fails open
            // (an unknown action, or Redis unavailable whatever `on_error`
            // says). On Redis the charge is awaited, not waited for on the
            // runtime's thread.
            let Ok(d) = self.app.decide_async(&req, sluice_core::Mode::Check).await else {
                return Ok(());
            };
            if sluice_server::store_unavailable(&d) {
                return Ok(());
            }
            if d.allowed {
                left -= cost;
                continue;
            }
            match d.reason {
                Reason::Banned(_) | Reason::Blocked(_) => return Err(Stop::Banned),
                // An override made the bucket smaller than the chunk.
                Reason::TooLarge(_) if piece > 1 => piece = (piece / 2).max(1),
                Reason::TooLarge(_) => return Ok(()),
                _ => {
                    let wait = d.retry_after.min(Duration::from_secs(60));
                    *waited += wait;
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Ok(())
    }
}

/// Last time a byte moved either way, shared by both pumps and the idle watch.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    last: AtomicU64,
}

impl Activity {
    pub fn new(base: Instant) -> Self {
        Self {
            base,
            last: AtomicU64::new(since(base)),
        }
    }

    fn touch(&self) {
        self.last.store(since(self.base), Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `idle`.
    pub async fn idle(&self, idle: Duration) {
        loop {
            let last = Duration::from_nanos(self.last.load(Ordering::Relaxed));
            let deadline = self.base + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One direction of a connection.
pub(crate) struct Pump {
    pub dir: Direction,
    pub conn: Option<ConnBudget>,
    pub ip: Option<IpBudget>,
    pub ip_burst: Option<u64>,
    pub metrics: Arc<ListenerMetrics>,
    pub activity: Arc<Activity>,
}

impl Pump {
    /// Copies until EOF (then half-closes the writer) or an error.
    pub async fn run<R, W>(mut self, mut r: R, mut w: W) -> Result<(), Stop>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut chunk = CHUNK as u64;
        if let Some(c) = &self.conn {
            chunk = chunk.min(c.burst());
        }
        if let Some(b) = self.ip_burst {
            chunk = chunk.min(b);
        }
        let chunk = usize::try_from(chunk.max(1)).unwrap_or(CHUNK);
        let mut buf = vec![0u8; chunk];
        loop {
            let n = r.read(&mut buf).await.map_err(|_| Stop::Io)?;
            if n == 0 {
                let _ = w.shutdown().await;
                return Ok(());
            }
            self.activity.touch();
            let mut waited = Duration::ZERO;
            if let Some(c) = &mut self.conn {
                while let Err(wait) = c.take(n as u64) {
                    waited += wait;
                    tokio::time::sleep(wait).await;
                }
            }
            if let Some(ip) = &self.ip {
                ip.charge(n as u64, &mut waited).await?;
            }
            if !waited.is_zero() {
                self.metrics.add_throttled(self.dir, waited);
            }
            w.write_all(&buf[..n]).await.map_err(|_| Stop::Io)?;
            self.activity.touch();
            self.metrics.add_bytes(self.dir, n as u64);
        }
    }
}
