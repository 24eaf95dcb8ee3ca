//! Counting a proxied request when its response really ends: [`Tally`] records it exactly
//! once, and [`MeteredBody`] passes the upstream's body through and tells the tally how it
//! ended (last byte, broken, stalled, or abandoned by the client).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::Epoch;
use crate::model::Arm;

/// Error type of the bodies the proxy sends.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One routed request, counted once in the epoch it was routed in.
///
/// Dropped without an outcome (the client went away first), it is counted without an
/// error and with the time it had taken so far: a lower bound of its latency.
#[derive(Debug)]
pub(super) struct Tally {
    epoch: Arc<Epoch>,
    arm: Arm,
    start: Instant,
    done: bool,
}

impl Tally {
    pub(super) fn new(epoch: Arc<Epoch>, arm: Arm, start: Instant) -> Self {
        Tally {
            epoch,
            arm,
            start,
            done: false,
        }
    }

    /// Records the request now (latency to this moment) unless it already was.
    pub(super) fn finish(&mut self, error: bool) {
        if !self.done {
            self.done = true;
            self.epoch.record(self.arm, self.start.elapsed(), error);
        }
    }

    /// Leaves the request uncounted: it failed for a local reason, not the arm's.
    pub(super) fn discard(mut self) {
        self.done = true;
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The upstream went silent mid-body for longer than `upstream_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent no body data for {}", humantime::format_duration(*.0))]
pub(super) struct BodyStalled(Duration);

/// The upstream's response body on its way to the client, ending the request's [`Tally`]:
/// at the last frame as a success (or an error for a 5xx), at a body error or a stall as an
/// error. The error goes on to the client, so a broken body stays broken.
#[derive(Debug)]
pub(super) struct MeteredBody {
    inner: Incoming,
    tally: Tally,
    /// The status was a 5xx: the request is an error however its body ends.
    status_error: bool,
    stall_limit: Duration,
    /// Armed when the upstream first makes us wait (most bodies never do), re-armed after
    /// each frame that follows.
    stall: Option<Pin<Box<Sleep>>>,
    progressed: bool,
    failed: bool,
}

impl MeteredBody {
    pub(super) fn new(
        inner: Incoming,
        mut tally: Tally,
        status_error: bool,
        stall_limit: Duration,
    ) -> Self {
        // An empty body may never be polled: its last byte came with the headers.
        if inner.is_end_stream() {
            tally.finish(status_error);
        }
        MeteredBody {
            inner,
            tally,
            status_error,
            stall_limit,
            stall: None,
            progressed: false,
            failed: false,
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.failed {
            // Never a clean end after a failure: that could complete a broken message.
            return Poll::Ready(Some(Err("upstream body already failed".into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.tally.finish(this.status_error);
                }
                this.progressed = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                this.tally.finish(true);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.tally.finish(this.status_error);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let limit = this.stall_limit;
                let stall = match &mut this.stall {
                    Some(s) => {
                        if std::mem::take(&mut this.progressed) {
                            s.as_mut().reset(Instant::now() + limit);
                        }
                        s
                    }
                    None => {
                        this.progressed = false;
                        this.stall.insert(Box::pin(tokio::time::sleep(limit)))
                    }
                };
                if stall.as_mut().poll(cx).is_ready() {
                    this.failed = true;
                    this.tally.finish(true);
                    return Poll::Ready(Some(Err(BodyStalled(this.stall_limit).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.failed && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
