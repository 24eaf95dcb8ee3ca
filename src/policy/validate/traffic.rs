//! `[traffic]`: the provider, the built-in proxy's upstreams, limits and readiness probe.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::{TRAFFIC_TYPES, as_table, bounded, dur, take_tag};
use crate::policy::bounds::Bound;
use crate::policy::diag::{Ctx, table_value};
use crate::policy::providers;
use crate::policy::raw::RawProxy;
use crate::policy::{ProxyConfig, Readiness, TrafficConfig, Upstream};

pub(super) fn parse_upstream(ctx: &mut Ctx, s: &Spanned<String>, what: &str) -> Option<Upstream> {
    let url = s.get_ref().trim();
    let Some(rest) = url.strip_prefix("http://") else {
        ctx.error(
            s.span(),
            format!("{what} must be an http:// URL such as http://127.0.0.1:9001, got `{url}`"),
        );
        return None;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let ok = match authority.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    };
    if !ok {
        ctx.error(
            s.span(),
            format!("{what} needs a host and a port, e.g. http://127.0.0.1:9001, got `{url}`"),
        );
        return None;
    }
    Some(Upstream {
        url: url.to_string(),
        authority: authority.to_string(),
    })
}

/// Most request headers `max_headers` may allow (hyper keeps them per request).
pub(super) const MAX_HEADERS_LIMIT: i64 = 10_000;

/// The proxy's client-side limits: `header_read_timeout`, `idle_timeout`, `max_headers`.
pub(super) fn proxy_limits(ctx: &mut Ctx, raw: &RawProxy) -> (Duration, Duration, usize) {
    let (header, hspan) = dur(
        raw.header_read_timeout.as_ref(),
        crate::net::DEFAULT_HEADER_READ_TIMEOUT,
    );
    if header.is_zero() {
        ctx.error(
            hspan,
            "header_read_timeout must be positive (it closes connections whose request head is too slow)",
        );
    }
    let (idle, ispan) = dur(raw.idle_timeout.as_ref(), crate::net::DEFAULT_IDLE_TIMEOUT);
    if idle.is_zero() {
        ctx.error(
            ispan,
            "idle_timeout must be positive (it closes kept-alive connections without requests)",
        );
    }
    let mut max_headers = crate::net::DEFAULT_MAX_HEADERS;
    if let Some(m) = &raw.max_headers {
        match usize::try_from(*m.get_ref()) {
            Ok(n) if (1..=MAX_HEADERS_LIMIT).contains(m.get_ref()) => max_headers = n,
            _ => ctx.error(
                m.span(),
                format!(
                    "max_headers must be between 1 and {MAX_HEADERS_LIMIT}, got {}",
                    m.get_ref()
                ),
            ),
        }
    }
    (header, idle, max_headers)
}

pub(super) fn parse_traffic(ctx: &mut Ctx, v: &Spanned<DeValue<'_>>) -> Option<TrafficConfig> {
    let mut table = as_table(ctx, v, "[traffic]")?.clone();
    let span = v.span();
    let kind = take_tag(ctx, &mut table, "type", &span, "[traffic]", None)?;
    let rest = table_value(span, table);
    match kind.get_ref().as_str() {
        "proxy" => {
            let raw: RawProxy = ctx.de(&rest)?;
            let listen = raw.listen.get_ref().parse::<SocketAddr>();
            if listen.is_err() {
                ctx.error(
                    raw.listen.span(),
                    format!(
                        "listen must be an address such as 127.0.0.1:8080, got `{}`",
                        raw.listen.get_ref()
                    ),
                );
            }
            let baseline = parse_upstream(ctx, &raw.baseline, "baseline");
            let canary = parse_upstream(ctx, &raw.canary, "canary");
            let (timeout, _) = bounded(
                ctx,
                raw.upstream_timeout.as_ref(),
                Duration::from_secs(30),
                &Bound::timeout("upstream_timeout"),
            );
            let readiness = parse_readiness(ctx, &raw);
            let limits = proxy_limits(ctx, &raw);
            Some(TrafficConfig::Proxy(ProxyConfig {
                upstream_timeout: timeout,
                readiness: readiness?,
                header_read_timeout: limits.0,
                idle_timeout: limits.1,
                max_headers: limits.2,
                ..ProxyConfig::new(listen.ok()?, baseline?, canary?)
            }))
        }
        "haproxy" => providers::haproxy(ctx, &rest).map(TrafficConfig::Haproxy),
        "nginx" => providers::nginx(ctx, &rest).map(TrafficConfig::Nginx),
        "exec" => providers::exec(ctx, &rest).map(TrafficConfig::Exec),
        "http" => providers::http(ctx, &rest).map(TrafficConfig::Http),
        "gateway-api" => providers::gateway_api(ctx, &rest).map(TrafficConfig::GatewayApi),
        other => {
            ctx.error(
                kind.span(),
                format!(
                    "unknown traffic provider `{other}`; expected one of {}",
                    TRAFFIC_TYPES.join(", ")
                ),
            );
            None
        }
    }
}

/// The canary readiness probe of the built-in proxy (`readiness_*` keys).
pub(super) fn parse_readiness(ctx: &mut Ctx, raw: &RawProxy) -> Option<Readiness> {
    let before = ctx.diags.len();
    let mut r = Readiness::default();
    if let Some(p) = &raw.readiness_path {
        let path = p.get_ref().trim();
        if path.starts_with('/') && !path.contains(char::is_whitespace) {
            r.path = path.to_string();
        } else {
            ctx.error(
                p.span(),
                format!("readiness_path must be a path starting with `/`, e.g. \"/healthz\", got `{path}`"),
            );
        }
    }
    if let Some(list) = &raw.readiness_statuses {
        for s in list.get_ref() {
            match u16::try_from(*s.get_ref()) {
                Ok(code) if (100..=599).contains(&code) => r.statuses.push(code),
                _ => ctx.error(
                    s.span(),
                    format!(
                        "readiness status {} is not an HTTP status (100 to 599)",
                        s.get_ref()
                    ),
                ),
            }
        }
    }
    let (t, tspan) = dur(raw.readiness_timeout.as_ref(), r.timeout);
    if t.is_zero() {
        ctx.error(tspan, "readiness_timeout must be positive");
    }
    r.timeout = t;
    if let Some(a) = &raw.readiness_attempts {
        if *a.get_ref() == 0 {
            ctx.error(a.span(), "readiness_attempts must be at least 1");
        }
        r.attempts = *a.get_ref();
    }
    (ctx.diags.len() == before).then_some(r)
}
