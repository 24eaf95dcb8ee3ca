//! Validation of the `[traffic]` sections of the real traffic providers (haproxy, nginx,
//! exec, http, gateway-api): every problem is reported with its span, nothing is probed.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::bounds::Bound;
use super::diag::Ctx;
use super::raw::{RawExec, RawGatewayApi, RawHaproxy, RawHttp, RawNginx};
use super::template::Template;
use super::validate::{bounded, unknown_placeholders};
use super::{
    ExecConfig, GatewayApiConfig, HaproxyConfig, HaproxySocket, HttpConfig, HttpRead, NginxConfig,
    Secret,
};
use crate::model::Weight;

/// Placeholders of command and request templates: the weight as basis points, as a
/// percentage and as a fraction.
pub const WEIGHT_PLACEHOLDERS: &[&str] = &["weight", "percent", "fraction"];

/// Checks a template whose placeholders must come from `known`.
pub(super) fn fixed_template(
    ctx: &mut Ctx,
    s: &Spanned<String>,
    known: &[&str],
    what: &str,
) -> Option<Template> {
    match Template::parse(s.get_ref()) {
        Ok(t) => {
            let shown: Vec<String> = known.iter().map(ToString::to_string).collect();
            match unknown_placeholders(&t, known, &shown, what) {
                None => Some(t),
                Some(problem) => {
                    ctx.error(s.span(), problem);
                    None
                }
            }
        }
        Err(e) => {
            ctx.error(s.span(), format!("bad {what} template: {e}"));
            None
        }
    }
}

/// Where a bearer token comes from: `token_env` or `token_file`, never inline `token`.
pub(super) fn secret(
    ctx: &mut Ctx,
    inline: Option<&Spanned<toml::Value>>,
    env: Option<&Spanned<String>>,
    file: Option<&Spanned<String>>,
) -> Option<Secret> {
    if let Some(t) = inline {
        ctx.error(
            t.span(),
            "tokens are never written in a policy: use token_env = \"VAR\" or token_file = \"/path\"",
        );
    }
    match (env, file) {
        (Some(e), Some(_)) => {
            ctx.error(e.span(), "use token_env or token_file, not both");
            None
        }
        (Some(e), None) => {
            if e.get_ref().trim().is_empty() {
                ctx.error(e.span(), "token_env must name an environment variable");
            }
            Some(Secret::Env(e.get_ref().clone()))
        }
        (None, Some(f)) => {
            if f.get_ref().trim().is_empty() {
                ctx.error(f.span(), "token_file must be a path");
            }
            Some(Secret::File(PathBuf::from(f.get_ref())))
        }
        (None, None) => None,
    }
}

/// A time limit of one call: `default` when absent, within [`Bound::timeout`].
/// `env = ["NAME", ...]`: environment variable names passed to a program.
pub(super) fn env_names(ctx: &mut Ctx, v: Option<&Spanned<Vec<Spanned<String>>>>) -> Vec<String> {
    let mut out = Vec::new();
    for n in v.map(|v| v.get_ref().as_slice()).unwrap_or_default() {
        let name = n.get_ref();
        let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            out.push(name.clone());
        } else {
            ctx.error(
                n.span(),
                format!(
                    "env must list environment variable names (letters, digits, _), got `{name}`"
                ),
            );
        }
    }
    out
}

/// With a token configured, `url` must not carry credentials too: the HTTP client would
/// send the URL's basic auth and silently drop the bearer token.
pub(super) fn one_credential(ctx: &mut Ctx, url: &Spanned<String>, what: &str) {
    let u = url.get_ref();
    let authority = u
        .split_once("://")
        .map_or("", |(_, r)| r.split(['/', '?', '#']).next().unwrap_or(""));
    if authority.contains('@') {
        ctx.error(
            url.span(),
            format!(
                "{what} carries credentials (user:password@) and a token is configured: the URL's credentials would replace the token; keep one (prefer token_env or token_file)"
            ),
        );
    }
}

pub(super) fn positive_dur(
    ctx: &mut Ctx,
    v: Option<&Spanned<super::raw::Dur>>,
    default: Duration,
    what: &'static str,
) -> Duration {
    bounded(ctx, v, default, &Bound::timeout(what)).0
}

/// A name that must be non-empty and free of whitespace and the characters in `bad`.
fn name(ctx: &mut Ctx, s: &Spanned<String>, what: &str, bad: &[char]) -> String {
    let v = s.get_ref();
    if v.is_empty() {
        ctx.error(s.span(), format!("{what} must not be empty"));
    } else if let Some(c) = v.chars().find(|c| c.is_whitespace() || bad.contains(c)) {
        ctx.error(
            s.span(),
            format!("{what} `{v}` must not contain {:?}", c.to_string()),
        );
    }
    v.clone()
}

fn distinct(ctx: &mut Ctx, baseline: &Spanned<String>, canary: &Spanned<String>, what: &str) {
    if baseline.get_ref() == canary.get_ref() && !canary.get_ref().is_empty() {
        ctx.error(
            canary.span(),
            format!(
                "baseline and canary name the same {what} `{}`",
                canary.get_ref()
            ),
        );
    }
}

/// An argv list: non-empty, the program non-empty.
pub(super) fn argv(ctx: &mut Ctx, v: &Spanned<Vec<Spanned<String>>>, what: &str) -> bool {
    match v.get_ref().first() {
        None => {
            ctx.error(
                v.span(),
                format!("{what} must name a program: an argv list such as [\"/usr/local/bin/set-weight\", \"{{{{percent}}}}\"]"),
            );
            false
        }
        Some(p) if p.get_ref().trim().is_empty() => {
            ctx.error(p.span(), format!("{what}: the program must not be empty"));
            false
        }
        Some(_) => true,
    }
}

fn plain_argv(
    ctx: &mut Ctx,
    v: Option<&Spanned<Vec<Spanned<String>>>>,
    default: &[&str],
    what: &str,
) -> Vec<String> {
    match v {
        None => default.iter().map(ToString::to_string).collect(),
        Some(v) => {
            argv(ctx, v, what);
            v.get_ref().iter().map(|a| a.get_ref().clone()).collect()
        }
    }
}

/// A `resolution` in percent: a positive multiple of 0.01 up to 100.
fn resolution(ctx: &mut Ctx, v: Option<&Spanned<f64>>) -> Weight {
    let Some(v) = v else {
        return Weight::try_from_bp(1).expect("constant");
    };
    let pct = *v.get_ref();
    match Weight::try_from_percent(pct) {
        Ok(w)
            if w > Weight::ZERO
                && (w.percent() - pct).abs() < 1e-9
                && 10_000 % u32::from(w.bp()) == 0 =>
        {
            w
        }
        _ => {
            ctx.error(
                v.span(),
                format!("resolution must be a percentage in (0, 100] that divides 100 (e.g. 0.01, 0.1, 1, 5), got {pct}"),
            );
            Weight::FULL
        }
    }
}

pub(super) fn haproxy(ctx: &mut Ctx, rest: &Spanned<DeValue<'_>>) -> Option<HaproxyConfig> {
    let raw: RawHaproxy = ctx.de(rest)?;
    let before = ctx.diags.len();
    let socket = haproxy_socket(ctx, &raw.socket);
    let bad = ['/', ';', '#'];
    let backend = name(ctx, &raw.backend, "backend", &bad);
    let baseline = name(ctx, &raw.baseline, "baseline server", &bad);
    let canary = name(ctx, &raw.canary, "canary server", &bad);
    distinct(ctx, &raw.baseline, &raw.canary, "server");
    let timeout = positive_dur(ctx, raw.timeout.as_ref(), Duration::from_secs(5), "timeout");
    (ctx.diags.len() == before).then(|| HaproxyConfig {
        socket: socket.expect("checked"),
        backend,
        baseline,
        canary,
        timeout,
    })
}

fn haproxy_socket(ctx: &mut Ctx, s: &Spanned<String>) -> Option<HaproxySocket> {
    let v = s.get_ref().trim();
    if let Some(path) = v.strip_prefix("unix@").or(v.starts_with('/').then_some(v)) {
        if path.len() > 1 {
            return Some(HaproxySocket::Unix(PathBuf::from(path)));
        }
    } else {
        let addr = v
            .strip_prefix("ipv4@")
            .or_else(|| v.strip_prefix("ipv6@"))
            .or_else(|| v.strip_prefix("tcp@"))
            .unwrap_or(v);
        let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if ok {
            return Some(HaproxySocket::Tcp(addr.to_string()));
        }
    }
    ctx.error(
        s.span(),
        format!(
            "socket must be a unix socket path (/run/haproxy/admin.sock) or a TCP address (ipv4@127.0.0.1:9999), got `{v}`"
        ),
    );
    None
}

pub(super) fn nginx(ctx: &mut Ctx, rest: &Spanned<DeValue<'_>>) -> Option<NginxConfig> {
    let raw: RawNginx = ctx.de(rest)?;
    let before = ctx.diags.len();
    let file = raw.file.get_ref().trim();
    if file.is_empty() || file.ends_with('/') {
        ctx.error(
            raw.file.span(),
            format!("file must be the path of the include file coalmine writes, got `{file}`"),
        );
    }
    let bad = [';', '{', '}', '#', '"', '\''];
    let baseline = name(ctx, &raw.baseline, "baseline address", &bad);
    let canary = name(ctx, &raw.canary, "canary address", &bad);
    distinct(ctx, &raw.baseline, &raw.canary, "server address");
    let server_params = raw.server_params.as_ref().map(|p| {
        let v = p.get_ref().trim();
        if let Some(c) = v.chars().find(|c| bad.contains(c)) {
            ctx.error(
                p.span(),
                format!("server_params must not contain {:?}", c.to_string()),
            );
        }
        if v.split_whitespace()
            .any(|t| t.starts_with("weight=") || t == "down" || t == "backup")
        {
            ctx.error(
                p.span(),
                "server_params must not set weight, down or backup: coalmine writes those",
            );
        }
        v.to_string()
    });
    let test_command = plain_argv(
        ctx,
        raw.test_command.as_ref(),
        &["nginx", "-t"],
        "test_command",
    );
    let reload_command = plain_argv(
        ctx,
        raw.reload_command.as_ref(),
        &["nginx", "-s", "reload"],
        "reload_command",
    );
    let timeout = positive_dur(
        ctx,
        raw.timeout.as_ref(),
        Duration::from_secs(30),
        "timeout",
    );
    (ctx.diags.len() == before).then(|| NginxConfig {
        file: PathBuf::from(file),
        baseline,
        canary,
        server_params: server_params.filter(|p| !p.is_empty()),
        test_command,
        reload_command,
        timeout,
    })
}

pub(super) fn exec(ctx: &mut Ctx, rest: &Spanned<DeValue<'_>>) -> Option<ExecConfig> {
    if let DeValue::Table(t) = rest.get_ref() {
        for (k, v) in t {
            if matches!(k.get_ref().as_ref(), "command" | "read_command")
                && matches!(v.get_ref(), DeValue::String(_))
            {
                ctx.error(
                    v.span(),
                    format!(
                        "{} is an argv list, never a shell string: write e.g. [\"/usr/local/bin/set-weight\", \"--percent\", \"{{{{percent}}}}\"]",
                        k.get_ref()
                    ),
                );
                return None;
            }
        }
    }
    let raw: RawExec = ctx.de(rest)?;
    let before = ctx.diags.len();
    argv(ctx, &raw.command, "command");
    let command: Vec<Option<Template>> = raw
        .command
        .get_ref()
        .iter()
        .map(|a| fixed_template(ctx, a, WEIGHT_PLACEHOLDERS, "command"))
        .collect();
    if let Some(Some(p)) = command.first()
        && !p.placeholders().is_empty()
    {
        ctx.error(
            raw.command.get_ref()[0].span(),
            "the program (first element of command) must not contain placeholders",
        );
    }
    let read_command = raw.read_command.as_ref().map(|r| {
        argv(ctx, r, "read_command");
        for a in r.get_ref() {
            if a.get_ref().contains("{{") {
                ctx.error(
                    a.span(),
                    "read_command takes no placeholders: it prints the percentage in force",
                );
            }
        }
        r.get_ref().iter().map(|a| a.get_ref().clone()).collect()
    });
    let timeout = positive_dur(
        ctx,
        raw.timeout.as_ref(),
        Duration::from_secs(30),
        "timeout",
    );
    let resolution = resolution(ctx, raw.resolution.as_ref());
    let env = env_names(ctx, raw.env.as_ref());
    (ctx.diags.len() == before).then(|| ExecConfig {
        command: command.into_iter().flatten().collect(),
        read_command,
        timeout,
        resolution,
        transient_exit_codes: raw.transient_exit_codes.unwrap_or_else(|| vec![75]),
        env,
    })
}

/// Sample values for checking templates at validation time.
fn sample(name: &str) -> Option<std::borrow::Cow<'static, str>> {
    match name {
        "weight" => Some("1250".into()),
        "percent" => Some("12.5".into()),
        "fraction" => Some("0.125".into()),
        _ => None,
    }
}

pub(super) fn http_url(ctx: &mut Ctx, s: &Spanned<String>, rendered: &str, what: &str) {
    let ok = ["http://", "https://"]
        .iter()
        .any(|p| rendered.strip_prefix(p).is_some_and(|r| !r.is_empty()))
        && !rendered.contains(char::is_whitespace);
    if !ok {
        ctx.error(
            s.span(),
            format!(
                "{what} must be an http:// or https:// URL, got `{}`",
                s.get_ref()
            ),
        );
    }
}

pub(super) fn http(ctx: &mut Ctx, rest: &Spanned<DeValue<'_>>) -> Option<HttpConfig> {
    let raw: RawHttp = ctx.de(rest)?;
    let before = ctx.diags.len();
    let url = fixed_template(ctx, &raw.url, WEIGHT_PLACEHOLDERS, "url");
    if let Some(u) = &url {
        let r = u.render(sample).unwrap_or_default();
        http_url(ctx, &raw.url, &r, "url");
    }
    let method = raw.method.as_ref().map_or("PUT".to_string(), |m| {
        let v = m.get_ref().trim().to_ascii_uppercase();
        if !matches!(v.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
            ctx.error(
                m.span(),
                format!("method must be one of GET, POST, PUT, PATCH, DELETE, got `{v}`"),
            );
        }
        v
    });
    let mut headers = Vec::new();
    for (k, v) in raw.headers.iter().flatten() {
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            ctx.error(v.span(), format!("bad header name `{k}`"));
        } else if k.eq_ignore_ascii_case("authorization") {
            ctx.error(
                v.span(),
                "credentials are never written in a policy: use token_env or token_file (sent in token_header)",
            );
        }
        if let Some(t) = fixed_template(ctx, v, WEIGHT_PLACEHOLDERS, "header") {
            headers.push((k.clone(), t));
        }
    }
    let body = raw.body.as_ref().and_then(|b| {
        let t = fixed_template(ctx, b, WEIGHT_PLACEHOLDERS, "body")?;
        let r = t.render(sample).unwrap_or_default();
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&r) {
            ctx.error(
                b.span(),
                format!("body must be JSON (checked with {{{{percent}}}} = 12.5): {e}"),
            );
        }
        Some(t)
    });
    let token = secret(
        ctx,
        raw.token.as_ref(),
        raw.token_env.as_ref(),
        raw.token_file.as_ref(),
    );
    if token.is_some() {
        one_credential(ctx, &raw.url, "url");
        if let Some(u) = &raw.read_url {
            one_credential(ctx, u, "read_url");
        }
    }
    let token_header = raw.token_header.as_ref().map_or_else(
        || "Authorization".to_string(),
        |h| name(ctx, h, "token_header", &[':']),
    );
    let mut success_statuses = Vec::new();
    if let Some(s) = &raw.success_statuses {
        if s.get_ref().is_empty() {
            ctx.error(
                s.span(),
                "success_statuses must not be empty (omit it for any 2xx)",
            );
        }
        for c in s.get_ref() {
            match u16::try_from(*c.get_ref()) {
                Ok(v) if (100..=599).contains(&v) => success_statuses.push(v),
                _ => ctx.error(
                    c.span(),
                    format!("{} is not an HTTP status (100..=599)", c.get_ref()),
                ),
            }
        }
    }
    let read = match (&raw.read_url, &raw.read_pointer) {
        (Some(u), Some(p)) => {
            http_url(ctx, u, u.get_ref(), "read_url");
            if u.get_ref().contains("{{") {
                ctx.error(u.span(), "read_url takes no placeholders");
            }
            let ptr = p.get_ref();
            if !(ptr.is_empty() || ptr.starts_with('/')) {
                ctx.error(
                    p.span(),
                    format!("read_pointer must be a JSON pointer such as /rollout/percentage, got `{ptr}`"),
                );
            }
            Some(HttpRead {
                url: u.get_ref().clone(),
                pointer: ptr.clone(),
            })
        }
        (Some(u), None) => {
            ctx.error(
                u.span(),
                "read_url needs read_pointer (the JSON pointer to the percentage)",
            );
            None
        }
        (None, Some(p)) => {
            ctx.error(p.span(), "read_pointer needs read_url");
            None
        }
        (None, None) => None,
    };
    let timeout = positive_dur(
        ctx,
        raw.timeout.as_ref(),
        Duration::from_secs(10),
        "timeout",
    );
    let resolution = resolution(ctx, raw.resolution.as_ref());
    (ctx.diags.len() == before).then(|| HttpConfig {
        method,
        url: url.expect("checked"),
        headers,
        body,
        token,
        token_header,
        token_prefix: raw.token_prefix.unwrap_or_else(|| "Bearer ".to_string()),
        success_statuses,
        timeout,
        resolution,
        read,
    })
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn k8s_name(ctx: &mut Ctx, s: &Spanned<String>, what: &str) -> String {
    let v = s.get_ref();
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        ctx.error(
            s.span(),
            format!("{what} must be a Kubernetes name (lowercase letters, digits, '-' and '.'), got `{v}`"),
        );
    }
    v.clone()
}

pub(super) fn gateway_api(ctx: &mut Ctx, rest: &Spanned<DeValue<'_>>) -> Option<GatewayApiConfig> {
    let raw: RawGatewayApi = ctx.de(rest)?;
    let before = ctx.diags.len();
    let namespace = k8s_name(ctx, &raw.namespace, "namespace");
    let route = k8s_name(ctx, &raw.route, "route");
    let baseline = k8s_name(ctx, &raw.baseline, "baseline backendRef");
    let canary = k8s_name(ctx, &raw.canary, "canary backendRef");
    distinct(ctx, &raw.baseline, &raw.canary, "backendRef");
    let rule = raw.rule.as_ref().map_or(0, |r| {
        usize::try_from(*r.get_ref()).unwrap_or_else(|_| {
            ctx.error(
                r.span(),
                format!("rule must be an index (0, 1, ...), got {}", r.get_ref()),
            );
            0
        })
    });
    let timeout = positive_dur(
        ctx,
        raw.timeout.as_ref(),
        Duration::from_secs(10),
        "timeout",
    );
    (ctx.diags.len() == before).then(|| GatewayApiConfig {
        namespace,
        route,
        rule,
        baseline,
        canary,
        kubeconfig: raw.kubeconfig.map(|k| PathBuf::from(k.into_inner())),
        context: raw.context.map(Spanned::into_inner),
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use crate::policy::{HaproxySocket, SourceConfig, TrafficConfig, parse};

    const METRICS: &str = "[metrics]\ntype = \"prometheus\"\nurl = \"http://127.0.0.1:9090\"\n\n[[metric]]\nname = \"errors\"\nevents = 'e{track=\"{{arm}}\"}'\ntrials = 't{track=\"{{arm}}\"}'\n";

    fn policy(traffic: &str) -> String {
        format!("name = \"t\"\n\n[traffic]\n{traffic}\n\n{METRICS}")
    }

    fn ok(traffic: &str) -> TrafficConfig {
        match parse(&policy(traffic), "p.toml") {
            Ok(p) => p.traffic,
            Err(d) => panic!("{d}"),
        }
    }

    /// Every problem, as `line:col: message` lines.
    fn problems(traffic: &str) -> String {
        let d = parse(&policy(traffic), "p.toml").unwrap_err();
        d.to_string().replace("p.toml:", "")
    }

    #[test]
    fn haproxy_sections() {
        let TrafficConfig::Haproxy(h) = ok(
            "type = \"haproxy\"\nsocket = \"/run/haproxy/admin.sock\"\nbackend = \"checkout\"\nbaseline = \"stable\"\ncanary = \"canary\"",
        ) else {
            panic!()
        };
        assert_eq!(
            h.socket,
            HaproxySocket::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(h.timeout.as_secs(), 5);
        let TrafficConfig::Haproxy(h) = ok(
            "type = \"haproxy\"\nsocket = \"ipv4@127.0.0.1:9999\"\nbackend = \"b\"\nbaseline = \"s\"\ncanary = \"c\"\ntimeout = \"2s\"",
        ) else {
            panic!()
        };
        assert_eq!(h.socket, HaproxySocket::Tcp("127.0.0.1:9999".into()));
        assert_eq!(
            problems(
                "type = \"haproxy\"\nsocket = \"admin.sock\"\nbackend = \"a/b\"\nbaseline = \"x\"\ncanary = \"x\"\ntimeout = \"0s\"\ncolour = 1"
            ),
            "5:10: socket must be a unix socket path (/run/haproxy/admin.sock) or a TCP address (ipv4@127.0.0.1:9999), got `admin.sock`\n\
             6:11: backend `a/b` must not contain \"/\"\n\
             8:10: baseline and canary name the same server `x`\n\
             9:11: timeout must be at least 10ms, got 0s: a shorter limit fails even a healthy call on a busy host\n\
             10:1: unknown key `colour` in [traffic] type = \"haproxy\"; expected one of type, socket, backend, baseline, canary, timeout"
        );
    }

    #[test]
    fn haproxy_metrics_need_haproxy_traffic() {
        let text = policy(
            "type = \"haproxy\"\nsocket = \"/s\"\nbackend = \"b\"\nbaseline = \"s\"\ncanary = \"c\"",
        )
        .replace(
            METRICS,
            "[metrics]\ntype = \"haproxy\"\n\n[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n",
        );
        let p = parse(&text, "p.toml").unwrap();
        assert!(matches!(p.source, SourceConfig::Haproxy(ref h) if h.backend == "b"));
        let bad = text.replace("builtin = \"errors\"", "builtin = \"latency\"");
        let d = parse(&bad, "p.toml").unwrap_err().to_string();
        assert!(d.contains("no latency histogram"), "{d}");
        let other = "name = \"t\"\n[traffic]\ntype = \"exec\"\ncommand = [\"/bin/true\"]\n[metrics]\ntype = \"haproxy\"\n[[metric]]\nname = \"e\"\nbuiltin = \"errors\"\n";
        let d = parse(other, "p.toml").unwrap_err().to_string();
        assert!(d.contains("needs [traffic] type = \"haproxy\""), "{d}");
    }

    #[test]
    fn nginx_sections() {
        let TrafficConfig::Nginx(n) = ok(
            "type = \"nginx\"\nfile = \"/etc/nginx/coalmine/checkout.conf\"\nbaseline = \"127.0.0.1:9001\"\ncanary = \"unix:/run/canary.sock\"",
        ) else {
            panic!()
        };
        assert_eq!(n.test_command, ["nginx", "-t"]);
        assert_eq!(n.reload_command, ["nginx", "-s", "reload"]);
        assert_eq!(
            problems(
                "type = \"nginx\"\nfile = \"/etc/\"\nbaseline = \"a;b\"\ncanary = \"c\"\nserver_params = \"weight=3\"\ntest_command = []\nreload_command = [\"\"]"
            ),
            "5:8: file must be the path of the include file coalmine writes, got `/etc/`\n\
             6:12: baseline address `a;b` must not contain \";\"\n\
             8:17: server_params must not set weight, down or backup: coalmine writes those\n\
             9:16: test_command must name a program: an argv list such as [\"/usr/local/bin/set-weight\", \"{{percent}}\"]\n\
             10:19: reload_command: the program must not be empty"
        );
    }

    #[test]
    fn exec_sections() {
        let TrafficConfig::Exec(e) = ok(
            "type = \"exec\"\ncommand = [\"/usr/local/bin/set-weight\", \"--percent\", \"{{percent}}\"]\nread_command = [\"/usr/local/bin/get-weight\"]\nresolution = 1",
        ) else {
            panic!()
        };
        assert_eq!(e.command.len(), 3);
        assert_eq!(e.resolution.bp(), 100);
        assert_eq!(e.transient_exit_codes, [75]);
        assert_eq!(
            problems("type = \"exec\"\ncommand = \"set-weight {{percent}}\""),
            "5:11: command is an argv list, never a shell string: write e.g. [\"/usr/local/bin/set-weight\", \"--percent\", \"{{percent}}\"]"
        );
        assert_eq!(
            problems(
                "type = \"exec\"\ncommand = [\"{{weight}}\", \"{{pct}}\", \"{{x\"]\nread_command = [\"get\", \"{{percent}}\"]\nresolution = 3"
            ),
            "5:12: the program (first element of command) must not contain placeholders\n\
             5:26: unknown placeholder `{{pct}}` in command; known: weight, percent, fraction\n\
             5:37: bad command template: unclosed `{{` at byte 0\n\
             6:24: read_command takes no placeholders: it prints the percentage in force\n\
             7:14: resolution must be a percentage in (0, 100] that divides 100 (e.g. 0.01, 0.1, 1, 5), got 3"
        );
    }

    #[test]
    fn http_sections() {
        let TrafficConfig::Http(h) = ok(
            "type = \"http\"\nurl = \"https://flags.example.com/api/flags/checkout\"\nbody = '{\"rollout\": {\"percentage\": {{percent}}}}'\ntoken_env = \"FLAGS_TOKEN\"\nread_url = \"https://flags.example.com/api/flags/checkout\"\nread_pointer = \"/rollout/percentage\"\nsuccess_statuses = [200, 204]",
        ) else {
            panic!()
        };
        assert_eq!(h.method, "PUT");
        assert_eq!(h.token_header, "Authorization");
        assert_eq!(h.success_statuses, [200, 204]);
        assert_eq!(
            problems(
                "type = \"http\"\nurl = \"flags/{{percent}}\"\nmethod = \"FETCH\"\nbody = '{\"rollout\": {{percent}'\ntoken = \"abc\"\nheaders = { Authorization = \"Basic x\" }\nsuccess_statuses = [200, 700]\nread_url = \"http://x/\""
            ),
            "5:7: url must be an http:// or https:// URL, got `flags/{{percent}}`\n\
             6:10: method must be one of GET, POST, PUT, PATCH, DELETE, got `FETCH`\n\
             7:8: bad body template: unclosed `{{` at byte 12\n\
             8:9: tokens are never written in a policy: use token_env = \"VAR\" or token_file = \"/path\"\n\
             9:29: credentials are never written in a policy: use token_env or token_file (sent in token_header)\n\
             10:26: 700 is not an HTTP status (100..=599)\n\
             11:12: read_url needs read_pointer (the JSON pointer to the percentage)"
        );
        assert!(
            problems("type = \"http\"\nurl = \"http://x/\"\nbody = '{\"rollout\": {{percent}}'")
                .starts_with("6:8: body must be JSON (checked with {{percent}} = 12.5): ")
        );
    }

    #[test]
    fn gateway_api_sections() {
        let TrafficConfig::GatewayApi(g) = ok(
            "type = \"gateway-api\"\nnamespace = \"shop\"\nroute = \"checkout\"\nbaseline = \"checkout-stable\"\ncanary = \"checkout-canary\"",
        ) else {
            panic!()
        };
        assert_eq!((g.rule, g.kubeconfig, g.timeout.as_secs()), (0, None, 10));
        assert_eq!(
            problems(
                "type = \"gateway-api\"\nnamespace = \"Shop\"\nroute = \"checkout\"\nrule = -1\nbaseline = \"a\"\ncanary = \"a\""
            ),
            "5:13: namespace must be a Kubernetes name (lowercase letters, digits, '-' and '.'), got `Shop`\n\
             7:8: rule must be an index (0, 1, ...), got -1\n\
             9:10: baseline and canary name the same backendRef `a`"
        );
    }

    #[test]
    fn unknown_provider_lists_them_all() {
        assert_eq!(
            problems("type = \"envoy\""),
            "4:8: unknown traffic provider `envoy`; expected one of proxy, haproxy, nginx, exec, http, gateway-api"
        );
    }
}

#[cfg(test)]
mod examples {
    /// Every example policy under `policies/` validates.
    #[test]
    fn example_policies_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                if let Err(d) = crate::policy::parse(&text, &path.display().to_string()) {
                    panic!("{d}");
                }
                seen.push(path.file_stem().unwrap().to_string_lossy().into_owned());
            }
        }
        for kind in ["haproxy", "nginx", "exec", "http", "gateway-api"] {
            assert!(seen.iter().any(|s| s == kind), "no policies/{kind}.toml");
        }
    }
}
