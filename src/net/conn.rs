//! Per-connection bookkeeping: whether a connection is busy (a request in flight) or idle,
//! since when, and the process-wide [`ConnBudget`] that caps accepted connections below the
//! file-descriptor limit and sheds idle connections first when it is reached.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Descriptors kept out of the connection cap for everything else a process holds (stdio,
/// the runtime, listeners, the decision log, hook pipes, idle pooled upstream connections).
const FD_RESERVE: u64 = 128;
/// The cap when the descriptor limit is unknown or unlimited.
const DEFAULT_CAP: usize = 4096;
/// Never fewer than this many connections, even under a tiny descriptor limit.
const MIN_CAP: usize = 16;

/// How many accepted connections a process may hold: half of what is left of the soft
/// `RLIMIT_NOFILE` after `FD_RESERVE`, so that every accepted connection can still open
/// its upstream connection (`(1024 - 128) / 2 = 448` under the common limit of 1,024).
#[must_use]
pub fn cap_for_fd_limit(soft_limit: Option<u64>) -> usize {
    match soft_limit {
        Some(l) => {
            let cap = l.saturating_sub(FD_RESERVE) / 2;
            usize::try_from(cap)
                .unwrap_or(usize::MAX)
                .clamp(MIN_CAP, 1 << 20)
        }
        None => DEFAULT_CAP,
    }
}

fn soft_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Whether an I/O error means this process ran out of something (descriptors, buffers,
/// memory, local ports): a local failure, never the fault of the peer.
#[must_use]
pub fn is_local_exhaustion(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        let local = [
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOBUFS,
            Errno::NOMEM,
            Errno::ADDRNOTAVAIL,
        ];
        e.raw_os_error()
            .is_some_and(|code| local.iter().any(|l| l.raw_os_error() == code))
    }
    #[cfg(not(unix))]
    {
        e.kind() == io::ErrorKind::OutOfMemory
    }
}

/// State of one accepted connection, shared by its task, its requests and the budget.
#[derive(Debug)]
pub(super) struct ConnInfo {
    base: Instant,
    /// Requests in flight (a tunnel counts as one for its whole life).
    busy: AtomicUsize,
    /// When the connection was accepted or its last request ended (ms since `base`).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived (ms since `base`, plus one;
    /// 0 while none has).
    head_started: AtomicU64,
    /// Requests completed on this connection.
    served: AtomicU64,
    /// Set by the budget to close the connection now.
    pub(super) shed: Notify,
    shedding: AtomicBool,
}

/// Why a connection's time ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    /// A request head took longer than `header_read_timeout` (a fresh connection counts
    /// from its accept).
    Header,
    /// No request for `idle_timeout` after the last one ended.
    Idle,
}

impl ConnInfo {
    fn new(base: Instant) -> Self {
        let info = ConnInfo {
            base,
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            served: AtomicU64::new(0),
            shed: Notify::new(),
            shedding: AtomicBool::new(false),
        };
        info.idle_since.store(info.now_ms(), Ordering::Relaxed);
        info
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// Requests completed on this connection.
    pub(super) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub(super) fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        if self.is_idle() && self.head_started.load(Ordering::Relaxed) == 0 {
            self.head_started
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// When the connection's time runs out if nothing happens, and why; `None` while busy.
    pub(super) fn deadline(&self, header: Duration, idle: Duration) -> Option<(Instant, Expiry)> {
        if !self.is_idle() {
            return None;
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head > 0 {
            return Some((self.at(head - 1) + header, Expiry::Header));
        }
        let since = self.at(self.idle_since.load(Ordering::Relaxed));
        if self.served.load(Ordering::Relaxed) == 0 {
            Some((since + header, Expiry::Header))
        } else {
            Some((since + idle, Expiry::Idle))
        }
    }

    /// Shedding order: connections that never completed a request first, then the ones idle
    /// the longest.
    fn shed_key(&self) -> (bool, u64) {
        (
            self.served.load(Ordering::Relaxed) > 0,
            self.idle_since.load(Ordering::Relaxed),
        )
    }
}

/// A request (or tunnel) in flight on a connection: the connection is busy while any
/// exists, and never shed or timed out.
#[derive(Debug)]
pub struct Busy {
    conn: ConnActivity,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let info = &self.conn.info;
        info.head_started.store(0, Ordering::Relaxed);
        info.idle_since.store(info.now_ms(), Ordering::Relaxed);
        info.served.fetch_add(1, Ordering::Relaxed);
        info.busy.fetch_sub(1, Ordering::Release);
    }
}

/// A handle on the connection a request arrived on, found in the extensions of requests
/// with an `Upgrade` header.
/// A handler that keeps using the connection after its response (an upgraded tunnel) holds
/// [`ConnActivity::busy`] for as long as it does.
#[derive(Clone, Debug)]
pub struct ConnActivity {
    info: Arc<ConnInfo>,
    /// Held, not read: the connection keeps its place in the budget while any handle lives.
    _slot: Arc<Slot>,
}

impl ConnActivity {
    /// Marks the connection busy until the guard is dropped.
    #[must_use]
    pub fn busy(&self) -> Busy {
        self.info.busy.fetch_add(1, Ordering::AcqRel);
        self.info.head_started.store(0, Ordering::Relaxed);
        Busy { conn: self.clone() }
    }

    pub(super) fn info(&self) -> &ConnInfo {
        &self.info
    }
}

/// A connection's place in the budget, released when the connection and everything that
/// still uses it (a tunnel) are gone.
#[derive(Debug)]
struct Slot {
    budget: Arc<ConnBudget>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.release(self.id);
    }
}

/// What the budget did with a newly accepted connection.
#[derive(Debug)]
pub(super) enum Admission {
    /// Under the cap.
    Admitted(ConnActivity),
    /// At the cap: the longest-idle connection was shed to make room.
    AfterShedding(ConnActivity),
    /// At the cap with every connection busy: answer 503 and close.
    Full,
}

/// A process-wide cap on accepted connections, shared by every server of the process (the
/// proxy and the status server use the same descriptors).
#[derive(Debug)]
pub struct ConnBudget {
    cap: usize,
    base: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnInfo>>>,
}

impl ConnBudget {
    /// A budget of `cap` connections.
    #[must_use]
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(ConnBudget {
            cap: cap.max(1),
            base: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        })
    }

    /// The process's budget, sized from its soft descriptor limit
    /// ([`cap_for_fd_limit`]) the first time it is asked for.
    #[must_use]
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<ConnBudget>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| ConnBudget::new(cap_for_fd_limit(soft_fd_limit())))
            .clone()
    }

    /// The cap.
    #[must_use]
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections held now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnInfo>>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Takes a new connection in, shedding an idle one when at the cap.
    pub(super) fn admit(self: &Arc<Self>) -> Admission {
        let mut conns = self.lock();
        let shed = conns.len() >= self.cap;
        if shed && !Self::shed_locked(&mut conns) {
            return Admission::Full;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ConnInfo::new(self.base));
        conns.insert(id, info.clone());
        let act = ConnActivity {
            info,
            _slot: Arc::new(Slot {
                budget: self.clone(),
                id,
            }),
        };
        if shed {
            Admission::AfterShedding(act)
        } else {
            Admission::Admitted(act)
        }
    }

    /// Closes the idle connection that should go first; false when none is idle.
    pub(super) fn shed_one(&self) -> bool {
        Self::shed_locked(&mut self.lock())
    }

    fn shed_locked(conns: &mut HashMap<u64, Arc<ConnInfo>>) -> bool {
        let victim = conns
            .iter()
            .filter(|(_, c)| c.is_idle() && !c.shedding.load(Ordering::Relaxed))
            .min_by_key(|(_, c)| c.shed_key())
            .map(|(id, _)| *id);
        let Some(id) = victim else { return false };
        if let Some(c) = conns.remove(&id) {
            c.shedding.store(true, Ordering::Relaxed);
            c.shed.notify_one();
        }
        true
    }
}

/// A client socket that tells its connection when request bytes arrive.
#[derive(Debug)]
pub(super) struct Watched<S> {
    inner: S,
    conn: ConnActivity,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S, conn: ConnActivity) -> Self {
        Watched { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.info.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that keeps its connection busy until it is sent (or dropped).
#[derive(Debug)]
pub(super) struct Guarded<B> {
    inner: B,
    _busy: Busy,
}

impl<B> Guarded<B> {
    pub(super) fn new(inner: B, busy: Busy) -> Self {
        Guarded { inner, _busy: busy }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Guarded<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_leaves_room_for_upstream_connections() {
        assert_eq!(cap_for_fd_limit(Some(1024)), 448);
        assert_eq!(cap_for_fd_limit(Some(20)), MIN_CAP);
        assert_eq!(cap_for_fd_limit(None), DEFAULT_CAP);
        assert_eq!(cap_for_fd_limit(Some(u64::MAX)), 1 << 20);
    }

    #[test]
    fn local_exhaustion_is_recognised() {
        #[cfg(unix)]
        {
            let emfile = io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
            assert!(is_local_exhaustion(&emfile));
            let refused =
                io::Error::from_raw_os_error(rustix::io::Errno::CONNREFUSED.raw_os_error());
            assert!(!is_local_exhaustion(&refused));
        }
        assert!(!is_local_exhaustion(&io::Error::other("x")));
    }

    fn admitted(budget: &Arc<ConnBudget>) -> ConnActivity {
        match budget.admit() {
            Admission::Admitted(c) | Admission::AfterShedding(c) => c,
            Admission::Full => panic!("full"),
        }
    }

    fn shed(c: &ConnActivity) -> bool {
        c.info.shedding.load(Ordering::Relaxed)
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_sheds_fresh_then_longest_idle_and_never_busy() {
        let budget = ConnBudget::new(3);
        let a = admitted(&budget);
        tokio::time::advance(Duration::from_millis(10)).await;
        let b = admitted(&budget);
        let c = admitted(&budget);
        tokio::time::advance(Duration::from_millis(10)).await;
        // `a` served a request and is idle; `b` never sent one; `c` is busy.
        drop(a.busy());
        let busy_c = c.busy();
        let d = admitted(&budget);
        // A connection that never completed a request goes first, although `a` is older.
        assert!(shed(&b) && !shed(&a));
        assert_eq!(budget.open(), 3);
        let e = admitted(&budget);
        assert!(shed(&d) && !shed(&a), "the fresh `d` before the served `a`");
        let busy_e = e.busy();
        let f = admitted(&budget);
        assert!(shed(&a), "the only idle connection left");
        let _busy_f = f.busy();
        assert!(matches!(budget.admit(), Admission::Full), "all busy");
        assert!(!shed(&c) && !shed(&e) && !shed(&f));
        drop(busy_c);
        tokio::time::advance(Duration::from_millis(10)).await;
        drop(busy_e);
        let _g = admitted(&budget);
        assert!(shed(&c) && !shed(&e), "`c` has been idle longer than `e`");
        assert_eq!(budget.open(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection_state() {
        let budget = ConnBudget::new(4);
        let Admission::Admitted(a) = budget.admit() else {
            panic!()
        };
        let (h, i) = (Duration::from_secs(10), Duration::from_secs(60));
        let start = Instant::now();
        // Fresh: the whole head within the header timeout from the accept.
        assert_eq!(a.info().deadline(h, i), Some((start + h, Expiry::Header)));
        let busy = a.busy();
        assert_eq!(a.info().deadline(h, i), None);
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(busy);
        // Kept alive after a request: idle timeout from its end.
        let end = Instant::now();
        assert_eq!(a.info().deadline(h, i), Some((end + i, Expiry::Idle)));
        // The first byte of the next head: header timeout from it.
        tokio::time::advance(Duration::from_secs(5)).await;
        a.info().on_read();
        let first = Instant::now();
        assert_eq!(a.info().deadline(h, i), Some((first + h, Expiry::Header)));
    }
}
