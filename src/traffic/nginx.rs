//! `nginx`: writes the `server` lines of one weighted upstream to an include file, tests
//! the configuration, and reloads nginx gracefully.
//!
//! The file holds exactly two `server` lines (the user's `upstream` block includes it and
//! keeps its own directives). nginx weights are positive integers, so a canary weight `w`
//! (basis points) becomes baseline `10000 − w` and canary `w`, divided by their greatest
//! common divisor (5 % → 19 : 1): every basis point is exact. 0 % and 100 % mark the idle
//! server `down`.
//!
//! Each change writes a temporary file in the same directory, fsyncs and renames it over
//! the include file, then runs the test command (`nginx -t`). If the test fails, the old
//! file is put back and the error (permanent) carries nginx's message. Then the reload
//! command (`nginx -s reload`) runs; if it fails, the old file is put back too and the
//! error is transient (nginx may be restarting). Read-back parses the file, which after a
//! successful reload is the configuration in force. The file is small and written inline
//! (not on a blocking thread), so a cancelled call can never land after a newer one.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::exec::run;
use super::{TrafficError, TrafficProvider};
use crate::model::Weight;
use crate::policy::NginxConfig;

const NAME: &str = "nginx";

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The nginx weights (baseline, canary) for a canary weight; `None` means `down`.
#[must_use]
pub fn server_weights(w: Weight) -> (Option<u32>, Option<u32>) {
    let c = u32::from(w.bp());
    let b = 10_000 - c;
    match (b, c) {
        (_, 0) => (Some(1), None),
        (0, _) => (None, Some(1)),
        _ => {
            let g = gcd(b, c);
            (Some(b / g), Some(c / g))
        }
    }
}

/// The include file's text for a canary weight.
#[must_use]
pub fn render(cfg: &NginxConfig, w: Weight) -> String {
    let (b, c) = server_weights(w);
    let line = |addr: &str, weight: Option<u32>| {
        let mut l = format!("server {addr}");
        match weight {
            Some(n) => {
                l.push_str(" weight=");
                l.push_str(&n.to_string());
            }
            None => l.push_str(" down"),
        }
        if let Some(p) = &cfg.server_params {
            l.push(' ');
            l.push_str(p);
        }
        l + ";\n"
    };
    format!(
        "# Written by coalmine: canary {w}. Replaced on every weight change; do not edit.\n{}{}",
        line(&cfg.baseline, b),
        line(&cfg.canary, c)
    )
}

/// The canary share written in an include file.
///
/// # Errors
/// A message when a server is missing or the file is malformed.
pub fn parse(text: &str, baseline: &str, canary: &str) -> Result<Weight, String> {
    let mut found: [Option<u32>; 2] = [None, None];
    for statement in text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
        .split(';')
    {
        let words: Vec<&str> = statement.split_whitespace().collect();
        let [kw, addr, params @ ..] = words.as_slice() else {
            continue;
        };
        if *kw != "server" {
            continue;
        }
        let slot = if *addr == baseline {
            0
        } else if *addr == canary {
            1
        } else {
            continue;
        };
        let mut weight = 1;
        for p in params {
            if *p == "down" {
                weight = 0;
                break;
            }
            if let Some(v) = p.strip_prefix("weight=") {
                weight = v
                    .parse::<u32>()
                    .ok()
                    .filter(|w| *w > 0)
                    .ok_or(format!("bad weight `{p}` for server {addr}"))?;
            }
        }
        found[slot] = Some(weight);
    }
    let [Some(b), Some(c)] = found else {
        let missing = if found[0].is_none() { baseline } else { canary };
        return Err(format!("no `server {missing}` line"));
    };
    let total = u64::from(b) + u64::from(c);
    if total == 0 {
        return Err("both servers are down".to_string());
    }
    let bp = (u64::from(c) * 10_000 + total / 2) / total;
    Weight::try_from_bp(bp as u32).map_err(|e| e.to_string())
}

/// Replaces `path` with `content` atomically: a temporary file in the same directory,
/// fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "include".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.coalmine-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The `nginx` provider.
#[derive(Debug)]
pub struct NginxProvider {
    cfg: NginxConfig,
    /// One change at a time (the lock is released if a call is cancelled).
    lock: tokio::sync::Mutex<()>,
}

impl NginxProvider {
    /// A provider for `cfg`.
    #[must_use]
    pub fn new(cfg: &NginxConfig) -> Self {
        NginxProvider {
            cfg: cfg.clone(),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn file(&self) -> String {
        self.cfg.file.display().to_string()
    }

    fn read(&self) -> Result<Option<Vec<u8>>, TrafficError> {
        match std::fs::read(&self.cfg.file) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TrafficError::Rejected {
                provider: NAME,
                message: format!("cannot read {}: {e}", self.file()),
            }),
        }
    }

    fn write(&self, content: Option<&[u8]>) -> Result<(), TrafficError> {
        let res = match content {
            Some(c) => write_atomic(&self.cfg.file, c),
            None => match std::fs::remove_file(&self.cfg.file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        res.map_err(|e| TrafficError::Rejected {
            provider: NAME,
            message: format!("cannot write {}: {e}", self.file()),
        })
    }

    /// Runs one of the configured commands; on failure puts `old` back.
    async fn command(
        &self,
        argv: &[String],
        old: Option<&[u8]>,
        what: &str,
        transient: bool,
    ) -> Result<(), TrafficError> {
        // Reload failures are transient (nginx may be restarting); config test failures
        // are not. Every exit code is one or the other.
        let codes: Vec<i32> = if transient {
            (1..=255).collect()
        } else {
            Vec::new()
        };
        match run(NAME, argv, self.cfg.timeout, &codes).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.write(old)?;
                Err(match e {
                    TrafficError::Rejected { message, .. }
                    | TrafficError::Unavailable { message, .. } => {
                        let message = format!("{what} failed, {} restored: {message}", self.file());
                        if transient {
                            TrafficError::Unavailable {
                                provider: NAME,
                                message,
                            }
                        } else {
                            TrafficError::Rejected {
                                provider: NAME,
                                message,
                            }
                        }
                    }
                    other @ TrafficError::Timeout { .. } => other,
                })
            }
        }
    }
}

impl TrafficProvider for NginxProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn current(&self) -> Result<Weight, TrafficError> {
        let Some(bytes) = self.read()? else {
            return Err(TrafficError::Rejected {
                provider: NAME,
                message: format!(
                    "include file {} does not exist; create it (docs/providers.md shows how)",
                    self.file()
                ),
            });
        };
        parse(
            &String::from_utf8_lossy(&bytes),
            &self.cfg.baseline,
            &self.cfg.canary,
        )
        .map_err(|m| TrafficError::Rejected {
            provider: NAME,
            message: format!("include file {}: {m}", self.file()),
        })
    }

    async fn set_weight(&self, weight: Weight) -> Result<(), TrafficError> {
        let _one = self.lock.lock().await;
        let old = self.read()?;
        self.write(Some(render(&self.cfg, weight).as_bytes()))?;
        self.command(
            &self.cfg.test_command,
            old.as_deref(),
            "configuration test",
            false,
        )
        .await?;
        self.command(&self.cfg.reload_command, old.as_deref(), "reload", true)
            .await
    }

    /// The include file parses and the configuration test passes.
    async fn preflight(&self) -> Result<(), TrafficError> {
        self.current().await?;
        let _one = self.lock.lock().await;
        run(NAME, &self.cfg.test_command, self.cfg.timeout, &[])
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::traffic::conformance;

    fn cfg(dir: &Path, test: &[&str], reload: &[&str]) -> NginxConfig {
        NginxConfig {
            file: dir.join("upstream.conf"),
            baseline: "127.0.0.1:9001".into(),
            canary: "127.0.0.1:9002".into(),
            server_params: Some("max_fails=3".into()),
            test_command: test.iter().map(ToString::to_string).collect(),
            reload_command: reload.iter().map(ToString::to_string).collect(),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn weights_are_exact() {
        let w = |pct| Weight::try_from_percent(pct).unwrap();
        assert_eq!(server_weights(w(5.0)), (Some(19), Some(1)));
        assert_eq!(server_weights(w(25.0)), (Some(3), Some(1)));
        assert_eq!(server_weights(w(0.0)), (Some(1), None));
        assert_eq!(server_weights(w(100.0)), (None, Some(1)));
        assert_eq!(server_weights(w(33.33)), (Some(6667), Some(3333)));
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), &["true"], &["true"]);
        for bp in (0..=10_000).step_by(13) {
            let w = Weight::try_from_bp(bp).unwrap();
            assert_eq!(parse(&render(&c, w), &c.baseline, &c.canary), Ok(w));
        }
        assert_eq!(
            render(&c, w(0.0)),
            "# Written by coalmine: canary 0%. Replaced on every weight change; do not edit.\n\
             server 127.0.0.1:9001 weight=1 max_fails=3;\nserver 127.0.0.1:9002 down max_fails=3;\n"
        );
    }

    #[test]
    fn parses_hand_written_files() {
        let text = "server 127.0.0.1:9001; # weight=7\nserver  127.0.0.1:9002  weight=3 ; server other:1 weight=9;";
        assert_eq!(
            parse(text, "127.0.0.1:9001", "127.0.0.1:9002")
                .unwrap()
                .bp(),
            7500
        );
        assert!(parse("server a weight=0;\nserver b;", "a", "b").is_err());
        assert!(parse("server a down;\nserver b down;", "a", "b").is_err());
        assert_eq!(
            parse("server a;", "a", "b"),
            Err("no `server b` line".into())
        );
        assert!(parse("server a weight=x;\nserver b;", "a", "b").is_err());
        assert!(parse("", "a", "b").is_err());
    }

    #[tokio::test]
    async fn conformance_with_trivial_commands() {
        let dir = tempfile::tempdir().unwrap();
        let p = NginxProvider::new(&cfg(dir.path(), &["true"], &["true"]));
        assert!(p.current().await.is_err(), "no file yet");
        let failures = conformance::check(&p, Weight::try_from_bp(1).unwrap()).await;
        assert!(failures.is_empty(), "{failures:#?}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary files left behind: {left:?}");
    }

    #[tokio::test]
    async fn a_failed_test_restores_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = NginxProvider::new(&cfg(dir.path(), &["true"], &["true"]));
        good.set_weight(Weight::try_from_percent(5.0).unwrap())
            .await
            .unwrap();
        let before = std::fs::read(dir.path().join("upstream.conf")).unwrap();
        let script = dir.path().join("nginx-t");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'nginx: [emerg] invalid parameter \"max_fails=x\" in upstream.conf:2' >&2\necho 'nginx: configuration file nginx.conf test failed' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let bad = NginxProvider::new(&cfg(dir.path(), &[script.to_str().unwrap()], &["true"]));
        let failures = conformance::check_failure(&bad, false).await;
        assert!(failures.is_empty(), "{failures:?}");
        let e = bad.set_weight(Weight::FULL).await.unwrap_err();
        assert!(
            e.to_string().contains("configuration test failed, ")
                && e.to_string().contains("restored: ")
                && e.to_string().contains("invalid parameter \"max_fails=x\""),
            "{e}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("upstream.conf")).unwrap(),
            before
        );
        assert_eq!(bad.current().await.unwrap().bp(), 500);
        // A failed reload: transient, old file back.
        let no_reload = NginxProvider::new(&cfg(dir.path(), &["true"], &["false"]));
        assert!(
            conformance::check_failure(&no_reload, true)
                .await
                .is_empty()
        );
        assert_eq!(
            std::fs::read(dir.path().join("upstream.conf")).unwrap(),
            before
        );
    }
}
