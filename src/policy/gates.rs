//! Confirmation gates (`[[rollout.gate]]` and `[[rollout.step.gate]]`): an outside system
//! asked, by a signed webhook or a command, before traffic moves; `rollback` gates told
//! after the canary's weight is back at 0, and `blue-retired` gates told when a blue-green
//! rollout stops keeping blue.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::Secret;
use super::diag::Ctx;
use super::providers::{argv, env_names, http_url, positive_dur};
use super::raw::Dur;

/// When a gate is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GateKind {
    /// Before any traffic moves (before the first step).
    ConfirmRollout,
    /// Before each weight increase from one step to the next below 100 %.
    ConfirmStep,
    /// Before the canary gets 100 %.
    ConfirmPromotion,
    /// After a rollback put the canary's weight back at 0 (told, never waited for).
    Rollback,
    /// Blue-green: at the end of `keep_blue`, when blue (the baseline) is no longer kept for
    /// a rollback and may be scaled down (told, never waited for).
    BlueRetired,
}

impl GateKind {
    /// The name used in policies and records.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            GateKind::ConfirmRollout => "confirm-rollout",
            GateKind::ConfirmStep => "confirm-step",
            GateKind::ConfirmPromotion => "confirm-promotion",
            GateKind::Rollback => "rollback",
            GateKind::BlueRetired => "blue-retired",
        }
    }
}

/// What a gate does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateAction {
    /// POSTs a JSON body describing the rollout and the step; a 2xx status says yes.
    Webhook {
        /// The URL.
        url: String,
        /// The HMAC-SHA256 key of the `X-Coalmine-Signature` header, if any.
        secret: Option<Secret>,
    },
    /// Runs a program (argv, never a shell string); exit 0 says yes.
    Command(Vec<String>),
}

/// One gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Unique name, for records.
    pub name: String,
    /// When it is asked (a step's own gates: before traffic moves to that step).
    pub kind: GateKind,
    /// What it does.
    pub action: GateAction,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// Extra attempts of a webhook that could not be reached or answered 5xx/429 (backoff
    /// 0.5 s doubling, at most 5 s), within one ask.
    pub retries: u32,
    /// Variables of coalmine's environment passed to a command (as `[[hook]] env`).
    pub env: Vec<String>,
}

/// `[[rollout.gate]]` (with `type`) or `[[rollout.step.gate]]` (without: it is asked before
/// traffic moves to its step).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGate {
    /// Unique name of the gate, for records.
    #[schemars(with = "String")]
    name: Spanned<String>,
    /// In [[rollout.gate]]: "confirm-rollout" (before any traffic moves), "confirm-step"
    /// (before each weight increase below 100), "confirm-promotion" (before 100),
    /// "rollback" (told after the weight is back at 0) or "blue-retired" (blue-green: told
    /// at the end of keep_blue). Not in a step's own gates.
    #[serde(rename = "type")]
    #[schemars(with = "Option<GateKind>")]
    kind: Option<Spanned<GateKind>>,
    /// A URL to POST the rollout's state to (JSON); a 2xx status says yes, anything else
    /// holds. Give webhook or command.
    #[schemars(with = "Option<String>")]
    webhook: Option<Spanned<String>>,
    /// A program to run (argv); exit 0 says yes, anything else holds. It gets
    /// COALMINE_ROLLOUT, COALMINE_GATE, COALMINE_GATE_TYPE, COALMINE_STEP and COALMINE_WEIGHT.
    #[schemars(with = "Option<Vec<String>>", extend("minItems" = 1))]
    command: Option<Spanned<Vec<Spanned<String>>>>,
    /// Environment variable holding the webhook's signing key: the body's HMAC-SHA256 is
    /// sent as `X-Coalmine-Signature: sha256=HEX`.
    #[schemars(with = "Option<String>")]
    secret_env: Option<Spanned<String>>,
    /// File holding the webhook's signing key (surrounding whitespace trimmed).
    #[schemars(with = "Option<String>")]
    secret_file: Option<Spanned<String>>,
    /// Never: signing keys are not written in a policy (use secret_env or secret_file).
    #[schemars(skip)]
    secret: Option<Spanned<toml::Value>>,
    /// Time limit of one attempt (10ms to 1h).
    #[schemars(with = "Option<Dur>", extend("default" = "10s"))]
    timeout: Option<Spanned<Dur>>,
    /// Extra attempts of a webhook that was unreachable or answered 5xx/429, with backoff.
    #[schemars(extend("default" = 2))]
    retries: Option<u32>,
    /// Variables of coalmine's environment passed to the command; never a token variable.
    #[schemars(with = "Option<Vec<String>>", extend("default" = []))]
    env: Option<Spanned<Vec<Spanned<String>>>>,
}

impl RawGate {
    /// Its `type`, when written.
    pub(crate) fn kind(&self) -> Option<&Spanned<GateKind>> {
        self.kind.as_ref()
    }
}

/// Checks gates; `step_gate` for a step's own (no `type`: `implied` is their kind).
pub(crate) fn parse_gates(
    ctx: &mut Ctx,
    raws: &[Spanned<RawGate>],
    implied: Option<GateKind>,
    names: &mut std::collections::BTreeSet<String>,
) -> Vec<Gate> {
    let mut out = Vec::new();
    for item in raws {
        let raw = item.get_ref();
        let name = raw.name.get_ref().trim().to_string();
        if name.is_empty() {
            ctx.error(raw.name.span(), "gate name must not be empty");
        } else if !names.insert(name.clone()) {
            ctx.error(raw.name.span(), format!("duplicate gate name `{name}`"));
        }
        let kind = match (&raw.kind, implied) {
            (Some(k), None) => *k.get_ref(),
            (None, Some(k)) => k,
            (Some(k), Some(_)) => {
                ctx.error(
                    k.span(),
                    format!(
                        "a step's gate `{name}` takes no type: it is asked before traffic moves to its step"
                    ),
                );
                continue;
            }
            (None, None) => {
                ctx.error(
                    item.span().start..item.span().start,
                    format!(
                        "gate `{name}` needs type = \"confirm-rollout\", \"confirm-step\", \"confirm-promotion\", \"rollback\" or \"blue-retired\""
                    ),
                );
                continue;
            }
        };
        if let Some(s) = &raw.secret {
            ctx.error(
                s.span(),
                "signing keys are never written in a policy: use secret_env = \"VAR\" or secret_file = \"/path\"",
            );
        }
        let action = match (&raw.webhook, &raw.command) {
            (Some(u), None) => {
                http_url(ctx, u, u.get_ref(), "gate webhook");
                let secret = match (&raw.secret_env, &raw.secret_file) {
                    (Some(e), Some(_)) => {
                        ctx.error(e.span(), "use secret_env or secret_file, not both");
                        None
                    }
                    (Some(e), None) => Some(Secret::Env(e.get_ref().trim().to_string())),
                    (None, Some(f)) => Some(Secret::File(PathBuf::from(f.get_ref()))),
                    (None, None) => None,
                };
                GateAction::Webhook {
                    url: u.get_ref().clone(),
                    secret,
                }
            }
            (None, Some(c)) => {
                argv(ctx, c, "gate command");
                if let Some(s) = raw.secret_env.as_ref().or(raw.secret_file.as_ref()) {
                    ctx.error(s.span(), "a signing key is for a webhook, not a command");
                }
                GateAction::Command(c.get_ref().iter().map(|a| a.get_ref().clone()).collect())
            }
            (Some(u), Some(_)) => {
                ctx.error(
                    u.span(),
                    format!("gate `{name}` needs webhook or command, not both"),
                );
                continue;
            }
            (None, None) => {
                ctx.error(
                    item.span().start..item.span().start,
                    format!(
                        "gate `{name}` needs webhook = \"url\" or command = [\"program\", \"arg\"]"
                    ),
                );
                continue;
            }
        };
        let timeout = positive_dur(
            ctx,
            raw.timeout.as_ref(),
            Duration::from_secs(10),
            "gate timeout",
        );
        out.push(Gate {
            name,
            kind,
            action,
            timeout,
            retries: raw.retries.unwrap_or(2),
            env: env_names(ctx, raw.env.as_ref()),
        });
    }
    out
}
