//! The gateway's workers: threads that each run a single-threaded tokio
//! runtime with their own upstream connection pool, as nginx runs worker
//! processes.
//!
//! The accept loop ([`crate::serve`]) hands every accepted connection to the
//! worker with the fewest open connections; from then on the connection, the
//! upstream connection that serves it and every task in between live on that
//! one thread. A request crosses no thread and wakes no other thread: on a
//! work-stealing runtime the same request moved between the downstream task,
//! the pooled upstream connection's task and back, often across threads (see
//! `docs/benchmarks.md`, "HTTP gateway"). The engine, the caches, the
//! counters and the long-poll slots are shared by all workers
//! ([`Gateway::for_worker`]), so limits and metrics are the gateway's, not a
//! worker's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use tokio::sync::{mpsc, oneshot, watch};

use crate::{accepted, Acceptor, Gateway, GatewayError};

/// Workers when the config names no number: one per core.
pub(crate) fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// An accepted connection on its way to a worker, with the drain token
/// ([`crate::serve`] waits until every one is dropped).
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    open: mpsc::Sender<()>,
}

/// One worker as the accept loop sees it.
struct Lane {
    queue: mpsc::UnboundedSender<Handoff>,
    /// Connections handed to this worker and not yet closed.
    open: Arc<AtomicUsize>,
}

/// A gateway's running workers. Dropping this closes their queues: each
/// worker then stops, dropping the connections it still has.
pub(crate) struct Workers {
    lanes: Vec<Lane>,
    /// The worker threads, joined by [`Workers::stop`].
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` worker threads for `gw` (at least one). Connections stop
    /// gracefully when `stop` turns true.
    pub(crate) async fn start(
        gw: &Gateway,
        acceptor: &Acceptor,
        n: usize,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, GatewayError> {
        let addr = gw.shared.cfg.listen;
        let mut lanes = Vec::with_capacity(n.max(1));
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let (queue, rx) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            let (ready_tx, ready_rx) = oneshot::channel();
            let worker = Worker {
                gw: gw.for_worker(),
                acceptor: acceptor.clone(),
                stop: stop.clone(),
                open: open.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("sluice-http-{i}"))
                .spawn(move || {
                    // Built on its own thread: a runtime must not be dropped
                    // inside another runtime, as it would be on an error here.
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                    match runtime {
                        Ok(rt) => {
                            let _ = ready_tx.send(Ok(()));
                            rt.block_on(worker.run(rx));
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .map_err(|source| GatewayError::Worker { addr, source })?;
            threads.push(thread);
            match ready_rx.await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => return Err(GatewayError::Worker { addr, source }),
                Err(_) => {
                    return Err(GatewayError::Worker {
                        addr,
                        source: std::io::Error::other("worker thread ended at start"),
                    })
                }
            }
            lanes.push(Lane { queue, open });
        }
        Ok(Self { lanes, threads })
    }

    /// Closes the workers' queues and waits (at most 5 s) for their threads
    /// to end: each drops the connections it still has, and with them
    /// their slots, whose releases (on Redis, sent without waiting) are
    /// then out before the service waits for them to settle.
    pub(crate) async fn stop(self) {
        let Workers { lanes, threads } = self;
        drop(lanes);
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), joined).await;
    }

    /// Hands `stream` to the worker with the fewest open connections.
    pub(crate) fn dispatch(&self, stream: std::net::TcpStream, peer: SocketAddr, open: mpsc::Sender<()>) {
        let Some(lane) = self.lanes.iter().min_by_key(|l| l.open.load(Ordering::Relaxed)) else {
            return;
        };
        lane.open.fetch_add(1, Ordering::Relaxed);
        if lane.queue.send(Handoff { stream, peer, open }).is_err() {
            // The worker has stopped (only at shutdown): the connection
            // closes as the handoff is dropped.
            lane.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A worker's shutdown signal for its connections: a flag they read
/// between requests, and their tasks' wakers to wake idle ones with.
///
/// A `watch` receiver per connection, polled beside the connection (as
/// `tokio::select!` does on every wake-up), takes a lock per poll; the flag
/// is one load, and a connection registers its waker once.
#[derive(Default)]
pub(crate) struct Stop {
    flag: AtomicBool,
    next: AtomicU64,
    wakers: Mutex<HashMap<u64, Waker>>,
}

impl Stop {
    /// The flag connections read: true once the gateway stops.
    pub(crate) fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// Registers the current task to be woken at shutdown, until the
    /// returned value is dropped.
    pub(crate) async fn register(self: &Arc<Self>) -> Registered {
        let waker = std::future::poll_fn(|cx| std::task::Poll::Ready(cx.waker().clone())).await;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, waker);
        Registered {
            stop: self.clone(),
            id,
        }
    }

    /// Raises the flag and wakes every registered connection.
    pub(crate) fn trigger(&self) {
        self.flag.store(true, Ordering::Relaxed);
        let wakers: Vec<Waker> = self
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, w)| w)
            .collect();
        for w in wakers {
            w.wake();
        }
    }
}

/// A connection's registration with [`Stop`].
pub(crate) struct Registered {
    stop: Arc<Stop>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.stop
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// What a worker thread owns.
struct Worker {
    gw: Gateway,
    acceptor: Acceptor,
    stop: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
}

/// Counts a connection as closed when dropped.
struct Closed(Arc<AtomicUsize>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Worker {
    /// Serves the connections handed over until the queue closes.
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Handoff>) {
        // Idle upstream connections are also closed on a quiet worker (a
        // busy one closes them as it takes and returns connections). The
        // task ends with the runtime.
        let upstream = self.gw.upstream.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::upstream::IDLE_TIMEOUT / 4);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                upstream.sweep();
            }
        });
        let stop = Arc::new(Stop::default());
        let mut signal = self.stop.clone();
        let trigger = stop.clone();
        tokio::spawn(async move {
            let _ = signal.wait_for(|s| *s).await;
            trigger.trigger();
        });
        while let Some(Handoff { stream, peer, open }) = rx.recv().await {
            let closed = Closed(self.open.clone());
            let gw = self.gw.clone();
            let acceptor = self.acceptor.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => accepted(gw, stream, peer, acceptor, stop).await,
                    Err(e) => tracing::debug!("http gateway worker: {e}"),
                }
                drop(closed);
                drop(open);
            });
        }
    }
}
