//! Traffic providers: how the controller moves requests between baseline and canary.
//!
//! One trait, [`TrafficProvider`], and one module per built-in provider, chosen by
//! `[traffic] type = "..."` and dispatched through [`AnyTrafficProvider`] (no boxing).
//! No third-party type appears in the trait; adapters convert to coalmine's own types.

use std::future::Future;
use std::time::Duration;

use crate::model::Weight;
use crate::policy::TrafficConfig;

pub mod exec;
pub mod gateway_api;
pub mod haproxy;
pub mod http;
pub mod mock;
pub mod nginx;
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
    /// HAProxy's runtime API.
    Haproxy(haproxy::HaproxyProvider),
    /// An nginx upstream include file.
    Nginx(nginx::NginxProvider),
    /// A program.
    Exec(exec::ExecProvider),
    /// An HTTP request (feature flags).
    Http(http::HttpProvider),
    /// Kubernetes Gateway API HTTPRoute weights.
    GatewayApi(gateway_api::GatewayApiProvider),
}

/// Calls the same method on whichever provider `self` holds.
macro_rules! dispatch {
    ($self:ident, $p:ident => $e:expr) => {
        match $self {
            AnyTrafficProvider::Proxy($p) => $e,
            AnyTrafficProvider::Haproxy($p) => $e,
            AnyTrafficProvider::Nginx($p) => $e,
            AnyTrafficProvider::Exec($p) => $e,
            AnyTrafficProvider::Http($p) => $e,
            AnyTrafficProvider::GatewayApi($p) => $e,
        }
    };
}

impl TrafficProvider for AnyTrafficProvider {
    fn name(&self) -> &'static str {
        dispatch!(self, p => p.name())
    }

    async fn current(&self) -> Result<Weight, TrafficError> {
        dispatch!(self, p => p.current().await)
    }

    async fn set_weight(&self, weight: Weight) -> Result<(), TrafficError> {
        dispatch!(self, p => p.set_weight(weight).await)
    }

    async fn preflight(&self) -> Result<(), TrafficError> {
        dispatch!(self, p => p.preflight().await)
    }

    fn resolution(&self) -> u16 {
        dispatch!(self, p => p.resolution())
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
    let provider = match cfg {
        TrafficConfig::Proxy(c) => {
            let handle = proxy::ProxyHandle::start(c, seed).await?;
            return Ok(BuiltTraffic {
                provider: AnyTrafficProvider::Proxy(handle.provider()),
                proxy: Some(handle),
            });
        }
        TrafficConfig::Haproxy(c) => AnyTrafficProvider::Haproxy(haproxy::HaproxyProvider::new(c)),
        TrafficConfig::Nginx(c) => AnyTrafficProvider::Nginx(nginx::NginxProvider::new(c)),
        TrafficConfig::Exec(c) => AnyTrafficProvider::Exec(exec::ExecProvider::new(c)),
        TrafficConfig::Http(c) => AnyTrafficProvider::Http(http::HttpProvider::new(c)?),
        TrafficConfig::GatewayApi(c) => {
            AnyTrafficProvider::GatewayApi(gateway_api::GatewayApiProvider::connect(c).await?)
        }
    };
    Ok(BuiltTraffic {
        provider,
        proxy: None,
    })
}

/// `w` rounded to the nearest multiple of `step` (for targets that take coarser weights).
#[must_use]
pub fn quantize(w: Weight, step: Weight) -> Weight {
    let step = u32::from(step.bp().max(1));
    let q = (u32::from(w.bp()) + step / 2) / step * step;
    Weight::try_from_bp(q.min(10_000)).unwrap_or(Weight::FULL)
}

/// A weight as a percentage without trailing zeros: `5`, `12.5`, `33.33`.
#[must_use]
pub fn percent_text(w: Weight) -> String {
    let s = format!("{}.{:02}", w.bp() / 100, w.bp() % 100);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Values of the weight placeholders (`{{weight}}` basis points, `{{percent}}`,
/// `{{fraction}}`) for rendering command and request templates.
pub fn weight_vars(w: Weight) -> impl Fn(&str) -> Option<std::borrow::Cow<'static, str>> {
    move |name| match name {
        "weight" => Some(w.bp().to_string().into()),
        "percent" => Some(percent_text(w).into()),
        "fraction" => Some(
            format!("{}.{:04}", w.bp() / 10_000, w.bp() % 10_000)
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
                .into(),
        ),
        _ => None,
    }
}

/// The message of an error followed by those of its sources (each once), for errors
/// that cross into coalmine's own types as text.
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// At most the last `max` bytes of a program's or a server's message, trimmed, for error
/// messages (the end of stderr usually says what went wrong).
#[must_use]
pub fn excerpt(text: &str, max: usize) -> String {
    let t = text.trim();
    if t.len() <= max {
        return t.replace('\n', " | ");
    }
    let mut start = t.len() - max;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", t[start..].replace('\n', " | "))
}

/// The last weight a provider without read-back put in force (its `current()`).
#[derive(Debug, Default)]
pub struct LastApplied(std::sync::Mutex<Option<Weight>>);

impl LastApplied {
    /// Remembers `w` as in force.
    pub fn set(&self, w: Weight) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(w);
    }

    /// The weight last set by this process.
    ///
    /// # Errors
    /// [`TrafficError::Rejected`] naming `provider` when nothing was set yet (`how` says
    /// which setting would give a real read-back).
    pub fn get(&self, provider: &'static str, how: &str) -> Result<Weight, TrafficError> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .ok_or_else(|| TrafficError::Rejected {
                provider,
                message: format!("no {how}, and no weight set by this run yet"),
            })
    }
}

/// Installs rustls' ring provider as the process default (once; later calls are no-ops),
/// for the HTTP clients of the `http` and `gateway-api` providers.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_text() {
        let w = |bp| Weight::try_from_bp(bp).unwrap();
        assert_eq!(percent_text(w(500)), "5");
        assert_eq!(percent_text(w(1250)), "12.5");
        assert_eq!(percent_text(w(3333)), "33.33");
        assert_eq!(percent_text(w(0)), "0");
        assert_eq!(percent_text(w(10_000)), "100");
        let v = weight_vars(w(1250));
        assert_eq!(v("weight").unwrap(), "1250");
        assert_eq!(v("fraction").unwrap(), "0.125");
        assert_eq!(weight_vars(w(10_000))("fraction").unwrap(), "1");
        assert_eq!(weight_vars(w(0))("fraction").unwrap(), "0");
        assert_eq!(v("other"), None);
        assert_eq!(quantize(w(1250), w(100)).bp(), 1300);
        assert_eq!(quantize(w(1249), w(100)).bp(), 1200);
        assert_eq!(quantize(w(9990), w(2500)).bp(), 10_000);
        assert_eq!(quantize(w(10_000), w(2500)).bp(), 10_000);
        assert_eq!(excerpt("  abc\ndef ", 100), "abc | def");
        assert_eq!(excerpt("ééé", 3), "…é");
    }
}

pub mod conformance;
#[cfg(test)]
pub(crate) mod fake_http;
