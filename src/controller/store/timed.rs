//! [`Timed`]: a [`Store`] that times every write of the store it wraps (`coalmine serve`'s
//! write-latency histogram, the serve benchmark's exact write times).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{RolloutState, Store, StoreError};

/// A store whose every write (`save`, `save_with_records`) is timed and told to `on_write`;
/// everything else is forwarded as is.
pub struct Timed<S> {
    inner: S,
    on_write: Arc<dyn Fn(Duration) + Send + Sync>,
}

impl<S> Timed<S> {
    /// Wraps `inner`; `on_write` is called with the time of each write, failed ones too.
    pub fn new(inner: S, on_write: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        Timed {
            inner,
            on_write: Arc::new(on_write),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Timed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timed")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Store for Timed<S> {
    type Guard = S::Guard;

    async fn load(&self, rollout: &str) -> Result<Option<RolloutState>, StoreError> {
        self.inner.load(rollout).await
    }

    async fn save(&self, state: &RolloutState, expected: u64) -> Result<u64, StoreError> {
        let t = Instant::now();
        let r = self.inner.save(state, expected).await;
        (self.on_write)(t.elapsed());
        r
    }

    async fn save_with_records(
        &self,
        state: &RolloutState,
        expected: u64,
        records: &[String],
    ) -> Result<u64, StoreError> {
        let t = Instant::now();
        let r = self.inner.save_with_records(state, expected, records).await;
        (self.on_write)(t.elapsed());
        r
    }

    fn keeps_records(&self) -> bool {
        self.inner.keeps_records()
    }

    async fn records(&self, rollout: &str) -> Result<Vec<String>, StoreError> {
        self.inner.records(rollout).await
    }

    async fn list(&self) -> Result<Vec<RolloutState>, StoreError> {
        self.inner.list().await
    }

    async fn acquire(&self, rollout: &str) -> Result<Self::Guard, StoreError> {
        self.inner.acquire(rollout).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.inner.ready().await
    }

    // Forwarded, never defaulted: a wrapper that answered `Ok(None)` would switch the
    // inner store's fence off.
    async fn fence(&self, rollout: &str) -> Result<Option<Duration>, StoreError> {
        self.inner.fence(rollout).await
    }
}
