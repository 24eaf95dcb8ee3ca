//! `[[hook]]` (pre-rollout smoke checks, actions after a promotion or a rollback) and
//! `[notify]` (a webhook told about every transition).

use std::collections::BTreeSet;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::diag::Ctx;
use super::providers::{argv, env_names, http_url, positive_dur};
use super::raw::Dur;

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HookWhen {
    /// Before any traffic moves; a failure ends the rollout with nothing changed.
    PreRollout,
    /// After the canary got all traffic.
    Promoted,
    /// After the canary's weight went back to 0.
    RolledBack,
}

impl HookWhen {
    /// The name used in policies and records.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            HookWhen::PreRollout => "pre-rollout",
            HookWhen::Promoted => "promoted",
            HookWhen::RolledBack => "rolled-back",
        }
    }
}

/// What a hook does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookAction {
    /// Runs a program (argv, never a shell string); exit 0 is success.
    Command(Vec<String>),
    /// Sends a GET request; a 2xx status is success.
    Http(String),
}

/// One `[[hook]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// Unique name, for records.
    pub name: String,
    /// When it runs.
    pub when: HookWhen,
    /// What it does.
    pub action: HookAction,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// Extra attempts after a failure (1 s apart).
    pub retries: u32,
    /// Variables of coalmine's environment passed to the command, beyond the few every
    /// program gets (see `traffic::exec::INHERITED`); never a token variable.
    pub env: Vec<String>,
}

/// How notifications are shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// The decision record itself (JSON).
    Record,
    /// `{"text": "..."}`, which Slack, Mattermost and Discord (`/slack`) webhooks take.
    Slack,
}

/// `[notify]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    /// Where each notification is POSTed.
    pub webhook: String,
    /// Which events (record `event` names); empty: every transition and the end.
    pub events: Vec<String>,
    /// Payload shape.
    pub format: NotifyFormat,
    /// Time limit of one request.
    pub timeout: Duration,
}

/// Event names a `[notify]` may select.
pub const NOTIFY_EVENTS: &[&str] = &[
    "started",
    "hook-ran",
    "checks-passed",
    "weight-applied",
    "apply-failed",
    "aborted",
    "hook-failed",
    "promoted",
    "rolled-back",
    "failed",
];

/// `[[hook]]`: a smoke check before traffic moves, or an action after the decision.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    /// Unique name of the hook, for records.
    #[schemars(with = "String")]
    name: Spanned<String>,
    /// When it runs: "pre-rollout" (before any traffic moves; a failure ends the rollout with
    /// nothing changed), "promoted" or "rolled-back" (after the decision).
    when: HookWhen,
    /// A program to run (argv, never a shell string); exit 0 is success. Give command or
    /// http.
    #[schemars(with = "Option<Vec<String>>", extend("minItems" = 1))]
    command: Option<Spanned<Vec<Spanned<String>>>>,
    /// A URL to GET; a 2xx status is success. Give command or http.
    #[schemars(with = "Option<String>")]
    http: Option<Spanned<String>>,
    /// Time limit of one attempt (10ms to 1h).
    #[schemars(with = "Option<super::raw::Dur>", extend("default" = "30s"))]
    timeout: Option<Spanned<Dur>>,
    /// Extra attempts after a failure, 1 s apart.
    #[schemars(extend("default" = 0))]
    retries: Option<u32>,
    /// Variables of coalmine's environment passed to the command, beyond PATH, HOME, USER,
    /// LOGNAME, LANG, LC_*, TZ, TMPDIR and COALMINE_*; never a token variable.
    #[schemars(with = "Option<Vec<String>>", extend("default" = []))]
    env: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[notify]`: a webhook told about transitions.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    /// Where each notification is POSTed (http:// or https://).
    #[schemars(with = "String")]
    webhook: Spanned<String>,
    /// Which events are sent (decision record event names). Default: every transition and
    /// the end.
    #[schemars(with = "Option<Vec<NotifyEventName>>")]
    events: Option<Vec<Spanned<String>>>,
    /// Payload shape: "record" (each decision record as JSON) or "slack" ({"text": ...}, which
    /// Slack, Mattermost and Discord webhooks take).
    #[schemars(extend("default" = "record"))]
    format: Option<NotifyFormat>,
    /// Time limit of one request (10ms to 1h).
    #[schemars(with = "Option<super::raw::Dur>", extend("default" = "5s"))]
    timeout: Option<Spanned<Dur>>,
}

/// An event name `[notify] events` may select: one of [`NOTIFY_EVENTS`].
pub(super) struct NotifyEventName;

impl JsonSchema for NotifyEventName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NotifyEvent".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "enum": NOTIFY_EVENTS })
    }
}

pub(super) fn parse_hooks(ctx: &mut Ctx, v: Option<&Spanned<DeValue<'_>>>) -> Vec<Hook> {
    let Some(v) = v else { return Vec::new() };
    let DeValue::Array(items) = v.get_ref() else {
        ctx.error(
            v.span(),
            "`hook` must be an array of tables: write [[hook]]",
        );
        return Vec::new();
    };
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for item in items {
        let Some(raw) = ctx.de::<RawHook>(item) else {
            continue;
        };
        let name = raw.name.get_ref().trim().to_string();
        if name.is_empty() {
            ctx.error(raw.name.span(), "hook name must not be empty");
        } else if !names.insert(name.clone()) {
            ctx.error(raw.name.span(), format!("duplicate hook name `{name}`"));
        }
        let action = match (&raw.command, &raw.http) {
            (Some(c), None) => {
                argv(ctx, c, "hook command");
                HookAction::Command(c.get_ref().iter().map(|a| a.get_ref().clone()).collect())
            }
            (None, Some(u)) => {
                http_url(ctx, u, u.get_ref(), "hook http");
                HookAction::Http(u.get_ref().clone())
            }
            (Some(c), Some(_)) => {
                ctx.error(
                    c.span(),
                    format!("hook `{name}` needs command or http, not both"),
                );
                continue;
            }
            (None, None) => {
                ctx.error(
                    item.span().start..item.span().start,
                    format!(
                        "hook `{name}` needs command = [\"program\", \"arg\"] or http = \"url\""
                    ),
                );
                continue;
            }
        };
        let timeout = positive_dur(
            ctx,
            raw.timeout.as_ref(),
            Duration::from_secs(30),
            "hook timeout",
        );
        let env = env_names(ctx, raw.env.as_ref());
        out.push(Hook {
            name,
            when: raw.when,
            action,
            timeout,
            retries: raw.retries.unwrap_or(0),
            env,
        });
    }
    out
}

pub(super) fn parse_notify(ctx: &mut Ctx, v: Option<&Spanned<DeValue<'_>>>) -> Option<Notify> {
    let raw: RawNotify = ctx.de(v?)?;
    http_url(ctx, &raw.webhook, raw.webhook.get_ref(), "webhook");
    let mut events = Vec::new();
    for e in raw.events.unwrap_or_default() {
        if NOTIFY_EVENTS.contains(&e.get_ref().as_str()) {
            events.push(e.get_ref().clone());
        } else {
            ctx.error(
                e.span(),
                format!(
                    "unknown event `{}`; expected some of {}",
                    e.get_ref(),
                    NOTIFY_EVENTS.join(", ")
                ),
            );
        }
    }
    let timeout = positive_dur(
        ctx,
        raw.timeout.as_ref(),
        Duration::from_secs(5),
        "notify timeout",
    );
    Some(Notify {
        webhook: raw.webhook.into_inner(),
        events,
        format: raw.format.unwrap_or(NotifyFormat::Record),
        timeout,
    })
}
