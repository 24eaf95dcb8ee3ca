//! `haproxy`: the two servers' weights of one backend, through HAProxy's runtime API.
//!
//! HAProxy takes server weights 0..=256. A canary weight `w` becomes the pair `(b, c)` of
//! baseline and canary server weights, each in 0..=256, whose share `c / (b + c)` is closest
//! to `w` (exact rational search, see [`server_weights`]); [`resolution`] is the worst
//! error over all weights (about 0.2 %, near 0 % and 100 % where the pairs are sparsest).
//! Weight 0 for the canary means HAProxy sends it no new requests (persistent sessions
//! excepted: do not use cookie persistence on the canary).
//!
//! A server in maintenance (`MAINT`, or `DRAIN`) takes no traffic whatever its weight, and
//! is an operator's deliberate act that coalmine must not undo: a weight that needs that
//! server is rejected (permanent, so the rollout rolls back) with a message saying which
//! server and how to bring it back, while weight 0 with the canary in maintenance is fine.
//! Read-back counts a server in maintenance as weight 0.

use std::sync::OnceLock;

use super::{TrafficError, TrafficProvider, error_chain};
use crate::model::Weight;
use crate::policy::HaproxyConfig;

pub mod runtime;

pub use runtime::{RuntimeApi, RuntimeError};

/// HAProxy's largest server weight.
pub const MAX_WEIGHT: u16 = 256;

const NAME: &str = "haproxy";

/// For every canary weight in basis points, the best `(baseline, canary)` server weights.
fn table() -> &'static [(u16, u16)] {
    static TABLE: OnceLock<Vec<(u16, u16)>> = OnceLock::new();
    TABLE.get_or_init(|| (0..=10_000).map(best_pair).collect())
}

/// The pair in 0..=256 whose share is closest to `bp` / 10 000; on ties the larger total.
fn best_pair(bp: u32) -> (u16, u16) {
    let max = u32::from(MAX_WEIGHT);
    let mut best = (max, 0_u32);
    // Error of c/n against bp/10000, as the fraction |10000·c − bp·n| / (10000·n).
    let mut best_err = (u64::from(bp) * u64::from(max), u64::from(max));
    for n in 1..=2 * max {
        let lo = n.saturating_sub(max);
        let hi = n.min(max);
        let c = ((u64::from(bp) * u64::from(n) + 5_000) / 10_000) as u32;
        for c in [c.saturating_sub(1), c, c + 1] {
            if c < lo || c > hi {
                continue;
            }
            let num = (10_000 * u64::from(c)).abs_diff(u64::from(bp) * u64::from(n));
            // num/n < best_num/best_n, or equal with a larger n.
            let lhs = u128::from(num) * u128::from(best_err.1);
            let rhs = u128::from(best_err.0) * u128::from(n);
            if lhs < rhs || (lhs == rhs && u64::from(n) > best_err.1) {
                best = (n - c, c);
                best_err = (num, u64::from(n));
            }
        }
    }
    (best.0 as u16, best.1 as u16)
}

/// The baseline and canary server weights for a canary weight.
#[must_use]
pub fn server_weights(w: Weight) -> (u16, u16) {
    table()[usize::from(w.bp())]
}

/// The canary share of a pair of server weights; `None` when neither takes traffic.
#[must_use]
pub fn share(baseline: u16, canary: u16) -> Option<Weight> {
    let total = u32::from(baseline) + u32::from(canary);
    if total == 0 {
        return None;
    }
    let bp = (u32::from(canary) * 10_000 + total / 2) / total;
    Weight::try_from_bp(bp).ok()
}

/// The worst difference (basis points) between a weight and the share HAProxy can put in
/// force for it.
#[must_use]
pub fn resolution() -> u16 {
    static RES: OnceLock<u16> = OnceLock::new();
    *RES.get_or_init(|| {
        table()
            .iter()
            .enumerate()
            .map(|(bp, &(b, c))| {
                let got = share(b, c).map_or(0, Weight::bp);
                got.abs_diff(bp as u16)
            })
            .max()
            .unwrap_or(0)
    })
}

/// The index of column `name` in a header.
fn column(header: &[&str], name: &str) -> Result<usize, String> {
    header
        .iter()
        .position(|h| *h == name)
        .ok_or(format!("no column {name}"))
}

/// One server's row of `show servers state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    /// The user weight (what `set weight` sets).
    pub weight: u16,
    /// The administrative state bit field (`srv_admin_state`).
    pub admin: u32,
    /// The operational state (`srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping).
    pub op: u32,
}

/// Maintenance bits of `srv_admin_state` (forced, inherited, configured, resolution and
/// hostname maintenance) and drain bits (forced, inherited).
const ADMIN_MAINT: u32 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40;
const ADMIN_DRAIN: u32 = 0x08 | 0x10;

impl ServerState {
    /// In maintenance or draining: takes no new requests whatever its weight.
    #[must_use]
    pub fn unavailable(&self) -> Option<&'static str> {
        if self.admin & ADMIN_MAINT != 0 {
            Some("in maintenance (MAINT)")
        } else if self.admin & ADMIN_DRAIN != 0 {
            Some("draining (DRAIN)")
        } else {
            None
        }
    }

    /// The weight that really takes effect for new requests.
    #[must_use]
    pub fn effective(&self) -> u16 {
        if self.unavailable().is_some() {
            0
        } else {
            self.weight
        }
    }
}

/// What `show servers state BACKEND` says about one server, parsed by column name.
///
/// # Errors
/// A message when the answer is not the expected table.
pub fn parse_servers_state(answer: &str, server: &str) -> Result<Option<ServerState>, String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("").trim();
    if first != "1" {
        return Err(first.to_string());
    }
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .ok_or("no header line")?
        .split_whitespace()
        .collect();
    let col = |name: &str| column(&header, name);
    let (name, weight, admin, op) = (
        col("srv_name")?,
        col("srv_uweight")?,
        col("srv_admin_state")?,
        col("srv_op_state")?,
    );
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(name) != Some(&server) {
            continue;
        }
        let num = |i: usize| {
            f.get(i)
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or(format!("bad row `{line}`"))
        };
        return Ok(Some(ServerState {
            weight: num(weight)?.min(u32::from(MAX_WEIGHT)) as u16,
            admin: num(admin)?,
            op: num(op)?,
        }));
    }
    Ok(None)
}

/// Turns an unreachable runtime API into the provider's error.
#[allow(clippy::needless_pass_by_value)] // used as `map_err(unreachable)`
fn unreachable(e: RuntimeError) -> TrafficError {
    match e {
        RuntimeError::Timeout { after, .. } => TrafficError::Timeout {
            provider: NAME,
            after,
        },
        RuntimeError::Io { .. } => TrafficError::Unavailable {
            provider: NAME,
            message: error_chain(&e),
        },
    }
}

fn rejected(message: String) -> TrafficError {
    TrafficError::Rejected {
        provider: NAME,
        message,
    }
}

/// The `haproxy` provider.
#[derive(Debug)]
pub struct HaproxyProvider {
    cfg: HaproxyConfig,
    api: RuntimeApi,
}

impl HaproxyProvider {
    /// A provider for `cfg` (connects only when called).
    #[must_use]
    pub fn new(cfg: &HaproxyConfig) -> Self {
        HaproxyProvider {
            api: RuntimeApi::new(cfg.socket.clone(), cfg.timeout),
            cfg: cfg.clone(),
        }
    }

    fn qualified(&self, server: &str) -> String {
        format!("{}/{server}", self.cfg.backend)
    }

    /// Both servers' states (baseline, canary).
    async fn states(&self) -> Result<(ServerState, ServerState), TrafficError> {
        let answer = self
            .api
            .command(&format!("show servers state {}", self.cfg.backend))
            .await
            .map_err(unreachable)?;
        let mut found = Vec::with_capacity(2);
        for server in [&self.cfg.baseline, &self.cfg.canary] {
            match parse_servers_state(&answer, server) {
                Ok(Some(s)) => found.push(s),
                Ok(None) => {
                    return Err(rejected(format!(
                        "server `{}` not found",
                        self.qualified(server)
                    )));
                }
                Err(msg) if msg.starts_with("Can't find backend") => {
                    return Err(rejected(format!(
                        "backend `{}` not found",
                        self.cfg.backend
                    )));
                }
                Err(msg) => {
                    return Err(self.answer_error("show servers state", &msg));
                }
            }
        }
        let canary = found.pop().expect("two servers");
        let baseline = found.pop().expect("two servers");
        Ok((baseline, canary))
    }

    /// Classifies an unexpected answer to `command`.
    fn answer_error(&self, command: &str, answer: &str) -> TrafficError {
        let text = answer.trim();
        let first = text.lines().next().unwrap_or("");
        if first.starts_with("Permission denied") {
            return rejected(format!(
                "runtime API at {} refused `{command}`: permission denied; give the stats socket `level admin`",
                self.api.socket()
            ));
        }
        if first.starts_with("Unknown command") {
            return rejected(format!(
                "runtime API at {} does not know `{command}` (is this HAProxy 1.8 or later?)",
                self.api.socket()
            ));
        }
        rejected(format!("runtime API answered `{command}` with: {first}"))
    }

    async fn set_server(&self, server: &str, weight: u16) -> Result<(), TrafficError> {
        let command = format!("set weight {} {weight}", self.qualified(server));
        let answer = self.api.command(&command).await.map_err(unreachable)?;
        let text = answer.trim();
        if text.is_empty() {
            return Ok(());
        }
        if text.starts_with("No such server") {
            return Err(rejected(format!(
                "server `{}` not found",
                self.qualified(server)
            )));
        }
        if text.starts_with("No such backend") {
            return Err(rejected(format!(
                "backend `{}` not found",
                self.cfg.backend
            )));
        }
        Err(self.answer_error(&command, text))
    }
}

impl TrafficProvider for HaproxyProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn current(&self) -> Result<Weight, TrafficError> {
        let (b, c) = self.states().await?;
        share(b.effective(), c.effective()).ok_or_else(|| {
            let why = |s: &ServerState| s.unavailable().unwrap_or("at weight 0").to_string();
            rejected(format!(
                "no server of backend `{}` takes traffic: `{}` is {}, `{}` is {}",
                self.cfg.backend,
                self.cfg.baseline,
                why(&b),
                self.cfg.canary,
                why(&c)
            ))
        })
    }

    async fn set_weight(&self, weight: Weight) -> Result<(), TrafficError> {
        let (b_state, c_state) = self.states().await?;
        let (b, c) = server_weights(weight);
        for (state, server, wanted) in [
            (&c_state, &self.cfg.canary, c),
            (&b_state, &self.cfg.baseline, b),
        ] {
            if wanted > 0
                && let Some(why) = state.unavailable()
            {
                return Err(rejected(format!(
                    "server `{}` is {why}: it would take no traffic at canary weight {weight}; bring it back with `set server {} state ready`",
                    self.qualified(server),
                    self.qualified(server)
                )));
            }
        }
        // Raise before lowering, so the two servers are never both at weight 0 in between
        // (also when this future is dropped between the two commands).
        if c >= c_state.weight {
            self.set_server(&self.cfg.canary, c).await?;
            self.set_server(&self.cfg.baseline, b).await
        } else {
            self.set_server(&self.cfg.baseline, b).await?;
            self.set_server(&self.cfg.canary, c).await
        }
    }

    async fn preflight(&self) -> Result<(), TrafficError> {
        self.states().await.map(|_| ())
    }

    fn resolution(&self) -> u16 {
        resolution()
    }
}

/// A server's counters from `show stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// Responses of any status, plus responses that never came (`eresp`).
    pub requests: u64,
    /// 5xx responses plus failed responses.
    pub errors: u64,
    /// The effective weight (`weight`), 0 in maintenance.
    pub weight: u64,
}

/// Counters of `backend/server` in a `show stat` CSV answer.
///
/// # Errors
/// A message when the answer is not CSV with the expected columns.
pub fn parse_show_stat(
    answer: &str,
    backend: &str,
    server: &str,
) -> Result<Option<ServerCounters>, String> {
    let mut lines = answer.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| answer.lines().next().unwrap_or("").to_string())?
        .split(',')
        .collect();
    let col = |name: &str| column(&header, name);
    let px = col("pxname")?;
    let sv = col("svname")?;
    let codes = [
        col("hrsp_1xx")?,
        col("hrsp_2xx")?,
        col("hrsp_3xx")?,
        col("hrsp_4xx")?,
        col("hrsp_5xx")?,
        col("hrsp_other")?,
    ];
    let eresp = col("eresp")?;
    let weight = col("weight")?;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.get(px) != Some(&backend) || f.get(sv) != Some(&server) {
            continue;
        }
        let num = |i: usize| -> u64 { f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
        let responses: u64 = codes.iter().map(|&i| num(i)).sum();
        let failed = num(eresp);
        return Ok(Some(ServerCounters {
            requests: responses + failed,
            errors: num(codes[4]) + failed,
            weight: num(weight),
        }));
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests;
