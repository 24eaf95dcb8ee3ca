//! `gateway-api`: the weights of two backendRefs of one rule of a Kubernetes HTTPRoute
//! (`gateway.networking.k8s.io/v1`), through the `kube` client.
//!
//! Gateway API weights are integers 0..=1 000 000 and the share of a backendRef is its
//! weight over the rule's total, so a canary weight `w` (basis points) is written exactly
//! as baseline `10000 − w`, canary `w`. A change reads the route, sets both weights in the
//! rule and sends the whole `spec.rules` back as a JSON merge patch that carries the
//! `resourceVersion` it read: if someone changed the route in between, the API server
//! answers 409 Conflict (transient: the retry reads again) instead of losing their change.
//! Read-back reads the spec; whether the gateway controller has programmed it is its own
//! matter (the route's status is not waited for).
//!
//! Errors: unreachable API server, timeouts, 409, 429 and 5xx are transient; a missing
//! route, rule or backendRef, bad credentials (401/403), an invalid patch (422) and a
//! broken kubeconfig are permanent.

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

use super::{TrafficError, TrafficProvider, error_chain as chain, install_tls_provider};
use crate::model::Weight;
use crate::policy::GatewayApiConfig;

const NAME: &str = "gateway-api";

/// The HTTPRoute resource.
#[must_use]
pub fn http_route() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

fn rejected(message: String) -> TrafficError {
    TrafficError::Rejected {
        provider: NAME,
        message,
    }
}

/// Where the two backendRefs sit in a route, and their weights.
#[derive(Debug, PartialEq, Eq)]
struct Refs {
    baseline: (usize, u64),
    canary: (usize, u64),
}

/// Finds the rule's baseline and canary backendRefs (weight 1 when absent, as the API
/// defines); any other backendRef with a non-zero weight is an error, since it would take
/// a share of the traffic coalmine does not control.
fn find_refs(spec: &Value, cfg: &GatewayApiConfig) -> Result<Refs, String> {
    let rules = spec
        .pointer("/rules")
        .and_then(Value::as_array)
        .ok_or("the route has no spec.rules")?;
    let rule = rules.get(cfg.rule).ok_or(format!(
        "the route has {} rule(s), no rule {}",
        rules.len(),
        cfg.rule
    ))?;
    let refs = rule
        .get("backendRefs")
        .and_then(Value::as_array)
        .ok_or(format!("rule {} has no backendRefs", cfg.rule))?;
    let mut found: [Option<(usize, u64)>; 2] = [None, None];
    for (i, r) in refs.iter().enumerate() {
        let name = r.get("name").and_then(Value::as_str).unwrap_or("");
        let weight = match r.get("weight") {
            None => 1,
            Some(w) => w
                .as_u64()
                .ok_or(format!("backendRef `{name}` has weight {w}"))?,
        };
        let slot = if name == cfg.baseline {
            0
        } else if name == cfg.canary {
            1
        } else {
            if weight > 0 {
                return Err(format!(
                    "rule {} has another backendRef `{name}` with weight {weight}: only `{}` and `{}` may take traffic",
                    cfg.rule, cfg.baseline, cfg.canary
                ));
            }
            continue;
        };
        if found[slot].is_some() {
            return Err(format!("rule {} names backendRef `{name}` twice", cfg.rule));
        }
        found[slot] = Some((i, weight));
    }
    match found {
        [Some(baseline), Some(canary)] => Ok(Refs { baseline, canary }),
        [b, _] => Err(format!(
            "rule {} has no backendRef `{}`",
            cfg.rule,
            if b.is_none() {
                &cfg.baseline
            } else {
                &cfg.canary
            }
        )),
    }
}

/// The canary share of two backendRef weights.
fn share(baseline: u64, canary: u64) -> Option<Weight> {
    let total = baseline.checked_add(canary)?;
    if total == 0 {
        return None;
    }
    let bp = (u128::from(canary) * 10_000 + u128::from(total) / 2) / u128::from(total);
    Weight::try_from_bp(bp as u32).ok()
}

/// The `gateway-api` provider.
pub struct GatewayApiProvider {
    cfg: GatewayApiConfig,
    api: Api<DynamicObject>,
}

impl std::fmt::Debug for GatewayApiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayApiProvider")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl GatewayApiProvider {
    /// Loads the kubeconfig (or the in-cluster configuration) and builds the client; no
    /// request is sent.
    ///
    /// # Errors
    /// [`TrafficError::Rejected`] when no usable configuration is found.
    pub async fn connect(cfg: &GatewayApiConfig) -> Result<Self, TrafficError> {
        install_tls_provider();
        let options = KubeConfigOptions {
            context: cfg.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match (&cfg.kubeconfig, &cfg.context) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    rejected(format!("kubeconfig {}: {}", path.display(), chain(&e)))
                })?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| {
                        rejected(format!("kubeconfig {}: {}", path.display(), chain(&e)))
                    })?
            }
            (None, Some(_)) => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| rejected(format!("kubeconfig: {}", chain(&e))))?,
            (None, None) => kube::Config::infer()
                .await
                .map_err(|e| rejected(format!("no Kubernetes configuration: {}", chain(&e))))?,
        };
        let mut config = config;
        config.connect_timeout = Some(cfg.timeout);
        config.read_timeout = Some(cfg.timeout);
        config.write_timeout = Some(cfg.timeout);
        let client = kube::Client::try_from(config)
            .map_err(|e| rejected(format!("cannot build the Kubernetes client: {}", chain(&e))))?;
        Ok(GatewayApiProvider {
            api: Api::namespaced_with(client, &cfg.namespace, &http_route()),
            cfg: cfg.clone(),
        })
    }

    fn route(&self) -> String {
        format!("httproute `{}/{}`", self.cfg.namespace, self.cfg.route)
    }

    /// Classifies a client error.
    fn error(&self, e: &kube::Error) -> TrafficError {
        let message = format!("{}: {}", self.route(), chain(e));
        match e {
            kube::Error::Api(status) => {
                let text = format!(
                    "{}: {} ({} {})",
                    self.route(),
                    status.message,
                    status.code,
                    status.reason
                );
                match status.code {
                    404 => rejected(format!("{} not found", self.route())),
                    401 | 403 => rejected(format!("{text}: credentials refused")),
                    409 | 429 | 500..=599 => TrafficError::Unavailable {
                        provider: NAME,
                        message: text,
                    },
                    _ => rejected(text),
                }
            }
            kube::Error::HyperError(_) | kube::Error::Service(_) => TrafficError::Unavailable {
                provider: NAME,
                message,
            },
            _ => rejected(message),
        }
    }

    async fn limited<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, TrafficError> {
        match tokio::time::timeout(self.cfg.timeout, call).await {
            Ok(r) => r.map_err(|e| self.error(&e)),
            Err(_) => Err(TrafficError::Timeout {
                provider: NAME,
                after: self.cfg.timeout,
            }),
        }
    }

    async fn get(&self) -> Result<(DynamicObject, Refs), TrafficError> {
        let obj = self.limited(self.api.get(&self.cfg.route)).await?;
        let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
        let refs =
            find_refs(&spec, &self.cfg).map_err(|m| rejected(format!("{}: {m}", self.route())))?;
        Ok((obj, refs))
    }
}

impl TrafficProvider for GatewayApiProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn current(&self) -> Result<Weight, TrafficError> {
        let (_, refs) = self.get().await?;
        share(refs.baseline.1, refs.canary.1).ok_or_else(|| {
            rejected(format!(
                "{}: both backendRefs have weight 0: no traffic is routed",
                self.route()
            ))
        })
    }

    async fn set_weight(&self, weight: Weight) -> Result<(), TrafficError> {
        let (obj, refs) = self.get().await?;
        let mut rules = obj
            .data
            .pointer("/spec/rules")
            .cloned()
            .unwrap_or(Value::Null);
        let c = u64::from(weight.bp());
        for (index, value) in [(refs.baseline.0, 10_000 - c), (refs.canary.0, c)] {
            if let Some(r) = rules
                .pointer_mut(&format!("/{}/backendRefs/{index}", self.cfg.rule))
                .and_then(Value::as_object_mut)
            {
                r.insert("weight".to_string(), json!(value));
            }
        }
        let patch = json!({
            "metadata": { "resourceVersion": obj.metadata.resource_version },
            "spec": { "rules": rules },
        });
        let params = PatchParams {
            field_manager: Some("coalmine".to_string()),
            ..PatchParams::default()
        };
        self.limited(
            self.api
                .patch(&self.cfg.route, &params, &Patch::Merge(&patch)),
        )
        .await
        .map(|_| ())
    }

    /// The route can be read and has both backendRefs.
    async fn preflight(&self) -> Result<(), TrafficError> {
        self.get().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests;
