//! The check every control endpoint runs before it moves traffic: a browser's "simple"
//! cross-origin request must never get through.
//!
//! A web page can make a browser send a POST with `Content-Type: text/plain` (or a form) to
//! any address, the status server on localhost included, without asking the server first.
//! It cannot add an `Authorization` header or `Content-Type: application/json` without a
//! CORS preflight, which this server never grants. So a mutating request is accepted only
//! when it carries one of those two headers and, when the browser says where it comes from
//! (`Origin`), comes from the server's own origin.

use hyper::header::{self, HeaderMap};
use hyper::{Request, StatusCode};

/// Why a control request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// 403 for a foreign origin, 415 for a request any web page could send.
    pub status: StatusCode,
    /// What was wrong and what to send instead.
    pub message: String,
}

impl Refused {
    /// `{"error": "..."}`.
    #[must_use]
    pub fn json(&self) -> String {
        serde_json::json!({ "error": self.message }).to_string()
    }
}

/// Checks a mutating request (POST, PUT, DELETE, …) to a control endpoint.
///
/// # Errors
/// [`Refused`] with 403 when an `Origin` header names another origin than the request's
/// `Host`, and with 415 when the request carries neither an `Authorization` header nor
/// `Content-Type: application/json`.
pub fn check_control_request<B>(req: &Request<B>) -> Result<(), Refused> {
    check_headers(req.headers())
}

fn check_headers(h: &HeaderMap) -> Result<(), Refused> {
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        let host = h
            .get(header::HOST)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if !same_origin(&origin, host.as_deref()) {
            return Err(Refused {
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "cross-origin request refused: Origin `{}` is not this server ({})",
                    origin.escape_debug(),
                    host.map_or_else(
                        || "no Host header".to_string(),
                        |h| format!("`{}`", h.escape_debug())
                    )
                ),
            });
        }
    }
    if h.contains_key(header::AUTHORIZATION) {
        return Ok(());
    }
    let json = h.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = String::from_utf8_lossy(v.as_bytes());
        let essence = v.split(';').next().unwrap_or_default().trim();
        essence.eq_ignore_ascii_case("application/json")
    });
    if json {
        Ok(())
    } else {
        Err(Refused {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "a control request needs `Content-Type: application/json` or an \
                      Authorization header (any web page can make a browser send text/plain \
                      or a form): e.g. curl -X POST -H 'Content-Type: application/json'"
                .to_string(),
        })
    }
}

/// `origin` (`scheme://host[:port]`) names the same host and port as `host` (the request's
/// `Host` header), default ports included.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let Some((scheme, authority)) = origin.trim().split_once("://") else {
        // "null" (sandboxed pages, file://) and anything unparsable.
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let norm = |a: &str| {
        let a = a.trim().trim_end_matches('/').to_ascii_lowercase();
        let (name, port) = split_port(&a);
        format!("{name}:{}", port.unwrap_or(default_port))
    };
    norm(authority) == norm(host)
}

/// `host[:port]`, with IPv6 literals in brackets.
fn split_port(a: &str) -> (&str, Option<&str>) {
    if let Some(rest) = a.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':')),
            None => (a, None),
        };
    }
    match a.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (a, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Result<(), Refused> {
        let mut b = Request::post("/approve");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        check_control_request(&b.body(()).unwrap())
    }

    fn status(r: Result<(), Refused>) -> u16 {
        r.map_or_else(|e| e.status.as_u16(), |()| 200)
    }

    #[test]
    fn simple_requests_are_refused() {
        let host = ("host", "127.0.0.1:9999");
        assert_eq!(status(req(&[host])), 415);
        assert_eq!(status(req(&[host, ("content-type", "text/plain")])), 415);
        assert_eq!(
            status(req(&[
                host,
                ("content-type", "application/x-www-form-urlencoded")
            ])),
            415
        );
        // A browser page elsewhere: refused whatever it sends.
        let evil = ("origin", "http://evil.example");
        assert_eq!(
            status(req(&[host, evil, ("content-type", "text/plain")])),
            403
        );
        assert_eq!(
            status(req(&[host, evil, ("content-type", "application/json")])),
            403
        );
        assert_eq!(status(req(&[host, ("origin", "null")])), 403);
        assert_eq!(
            status(req(&[host, ("origin", "http://127.0.0.1:9998")])),
            403
        );
    }

    #[test]
    fn deliberate_requests_pass() {
        let host = ("host", "127.0.0.1:9999");
        assert_eq!(
            status(req(&[host, ("content-type", "application/json")])),
            200
        );
        assert_eq!(
            status(req(&[
                host,
                ("content-type", "Application/JSON; charset=utf-8")
            ])),
            200
        );
        assert_eq!(status(req(&[host, ("authorization", "Bearer x")])), 200);
        // Same origin (a page served by this server), default ports and IPv6 included.
        let own = ("origin", "http://127.0.0.1:9999");
        assert_eq!(
            status(req(&[host, own, ("content-type", "application/json")])),
            200
        );
        assert_eq!(
            status(req(&[
                ("host", "status.example"),
                ("origin", "http://status.example:80"),
                ("authorization", "Bearer x")
            ])),
            200
        );
        assert_eq!(
            status(req(&[
                ("host", "[::1]:9999"),
                ("origin", "http://[::1]:9999"),
                ("authorization", "Bearer x")
            ])),
            200
        );
    }

    #[test]
    fn the_refusal_says_what_to_send() {
        let e = req(&[("host", "h:1"), ("origin", "http://evil.example")]).unwrap_err();
        assert!(
            e.message.contains("cross-origin") && e.message.contains("`http://evil.example`"),
            "{}",
            e.message
        );
        let e = req(&[("host", "h:1")]).unwrap_err();
        assert!(e.json().contains("application/json"), "{}", e.json());
    }
}
