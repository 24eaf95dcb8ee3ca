//! Traffic providers: how the controller moves requests between baseline and canary.
//!
//! One trait, [`TrafficProvider`], and one module per built-in provider, chosen by
//! `[traffic] type = "..."` and dispatched through [`AnyTrafficProvider`] (no boxing).
//! No third-party type appears in the trait; adapters convert to coalmine's own types.

use std::future::Future;
use std::time::Duration;

use crate::model::Weight;
use crate::policy::TrafficConfig;

pub mod mock;
pub mod proxy;

/// Why a provider call failed, and whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The provider could not be reached or was busy: retrying may help.
    #[error("provider `{provider}`: {message}")]
    Unavailable {
        /// Provider name.
        provider: &'static str,
        /// What happened.
        message: String,
    },
    /// The provider refused the change or its configuration is wrong: retrying will not help.
    #[error("provider `{provider}`: {message}")]
    Rejected {
        /// Provider name.
        provider: &'static str,
        /// What happened.
        message: String,
    },
    /// The call took longer than allowed.
    #[error("provider `{provider}`: no answer within {}", humantime::format_duration(*.after))]
    Timeout {
        /// Provider name.
        provider: &'static str,
        /// The limit.
        after: Duration,
    },
}

impl TrafficError {
    /// Whether a retry may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        !matches!(self, TrafficError::Rejected { .. })
    }

    /// Short label for logs and records.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            TrafficError::Unavailable { .. } => "unavailable",
            TrafficError::Rejected { .. } => "rejected",
            TrafficError::Timeout { .. } => "timeout",
        }
    }
}

/// Moves traffic between baseline and canary.
///
/// # Guarantees expected of implementors
/// `set_weight` is idempotent, and its future may be dropped at any `.await`: calling it
/// again with the same weight after a cancelled call must converge. `current` reads back
/// what is really in force, so a restarted controller can resume and a rollback can be
/// verified.
pub trait TrafficProvider: Send + Sync {
    /// Stable lowercase name for logs and records, e.g. `"haproxy"`.
    fn name(&self) -> &'static str;

    /// The canary weight really in force.
    fn current(&self) -> impl Future<Output = Result<Weight, TrafficError>> + Send;

    /// Puts `weight` in force.
    fn set_weight(&self, weight: Weight) -> impl Future<Output = Result<(), TrafficError>> + Send;

    /// Cheap reachability check for `coalmine validate`; by default always ready.
    fn preflight(&self) -> impl Future<Output = Result<(), TrafficError>> + Send {
        async { Ok(()) }
    }

    /// The finest weight step (in basis points) the provider can put in force: a read-back
    /// within this of the requested weight counts as applied. By default 1.
    fn resolution(&self) -> u16 {
        1
    }
}

/// The built-in providers, chosen by `[traffic] type`.
#[derive(Debug)]
pub enum AnyTrafficProvider {
    /// The built-in weighted reverse proxy.
    Proxy(proxy::ProxyProvider),
}

impl TrafficProvider for AnyTrafficProvider {
    fn name(&self) -> &'static str {
        match self {
            AnyTrafficProvider::Proxy(p) => p.name(),
        }
    }

    async fn current(&self) -> Result<Weight, TrafficError> {
        match self {
            AnyTrafficProvider::Proxy(p) => p.current().await,
        }
    }

    async fn set_weight(&self, weight: Weight) -> Result<(), TrafficError> {
        match self {
            AnyTrafficProvider::Proxy(p) => p.set_weight(weight).await,
        }
    }

    async fn preflight(&self) -> Result<(), TrafficError> {
        match self {
            AnyTrafficProvider::Proxy(p) => p.preflight().await,
        }
    }

    fn resolution(&self) -> u16 {
        match self {
            AnyTrafficProvider::Proxy(p) => p.resolution(),
        }
    }
}

/// What building the traffic side produced: the provider, and the built-in proxy when
/// there is one (the builtin metrics source reads its counters).
#[derive(Debug)]
pub struct BuiltTraffic {
    /// The provider.
    pub provider: AnyTrafficProvider,
    /// The running built-in proxy, for `[traffic] type = "proxy"`.
    pub proxy: Option<proxy::ProxyHandle>,
}

/// Builds the provider a policy names. For `proxy` this starts the proxy server.
///
/// # Errors
/// When the provider cannot be set up (e.g. the proxy's address is in use).
pub async fn build(cfg: &TrafficConfig) -> Result<BuiltTraffic, TrafficError> {
    build_seeded(cfg, None).await
}

/// [`build`] with a seed for the built-in proxy's routing (reproducible demos and tests).
///
/// # Errors
/// As [`build`].
pub async fn build_seeded(
    cfg: &TrafficConfig,
    seed: Option<u64>,
) -> Result<BuiltTraffic, TrafficError> {
    match cfg {
        TrafficConfig::Proxy(c) => {
            let handle = proxy::ProxyHandle::start(c, seed).await?;
            Ok(BuiltTraffic {
                provider: AnyTrafficProvider::Proxy(handle.provider()),
                proxy: Some(handle),
            })
        }
    }
}

pub mod conformance;
