//! `exec`: runs a configured program with the weight as an argument.
//!
//! The command is an argv list whose elements may hold `{{weight}}` (basis points),
//! `{{percent}}` and `{{fraction}}`; it is executed directly, never through a shell, with
//! stdin closed and a time limit (the child is killed when the limit passes or the call is
//! cancelled). Exit 0 is success; an exit code listed in `transient_exit_codes` (default
//! 75, `EX_TEMPFAIL`) asks for a retry; any other failure is permanent and its stderr is
//! reported. The optional `read_command` prints the percentage in force on stdout; without
//! it, read-back returns the last weight this process set successfully.

use std::process::Stdio;
use std::time::Duration;

use super::{LastApplied, TrafficError, TrafficProvider, excerpt, quantize, weight_vars};
use crate::model::Weight;
use crate::policy::ExecConfig;

const NAME: &str = "exec";

/// Kills a command's whole process group when dropped armed: a cancelled or timed-out
/// call must not leave a half-done change running (a shell script's children would
/// otherwise survive the script being killed, and race with the next call). The group is
/// then listed in [`KILLED`] until it is gone.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self
            .0
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            KILLED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(pid.as_raw_nonzero().get());
        }
    }
}

/// Process groups killed by a cancelled or timed-out call that may still have a running
/// member. `SIGKILL` is delivered asynchronously: a process inside a system call (a
/// `rename` waiting for the disk) finishes it first, so a killed script's `mv` could
/// otherwise move the next call's file away. Every program waits for these to be gone
/// before it starts ([`settle_killed`]).
static KILLED: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Longest wait for killed groups before a program starts anyway: a process stuck in the
/// kernel (a hung network file system) cannot be waited out, and the next call must still
/// be able to act.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// Waits, at most `limit`, until no group in [`KILLED`] has a living member (zombies do not
/// count: they run nothing); returns the groups still alive at the limit, which are
/// forgotten and logged.
async fn settle_killed(limit: Duration) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let alive: Vec<i32> = {
            let mut killed = KILLED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            killed.retain(|&g| group_alive(g));
            killed.clone()
        };
        if alive.is_empty() {
            return alive;
        }
        if tokio::time::Instant::now() >= deadline {
            KILLED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|g| !alive.contains(g));
            tracing::warn!(
                groups = ?alive,
                "killed process groups still running after {}; starting the next program anyway",
                humantime::format_duration(limit)
            );
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether process group `pgid` has a member that is not a zombie (from `/proc`).
#[cfg(target_os = "linux")]
fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .any(|e| {
            // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
            pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
        })
}

/// Whether process group `pgid` has a member (zombies included: no `/proc` to tell).
#[cfg(all(unix, not(target_os = "linux")))]
fn group_alive(pgid: i32) -> bool {
    rustix::process::Pid::from_raw(pgid)
        .is_some_and(|p| rustix::process::test_kill_process_group(p).is_ok())
}

#[cfg(not(unix))]
fn group_alive(_pgid: i32) -> bool {
    false
}

/// What a finished program left.
#[derive(Debug)]
pub struct Finished {
    /// Its stdout, at most [`OUTPUT_LIMIT`] bytes of it (the end), with a note of how much
    /// was cut.
    pub stdout: String,
}

/// Most bytes of a program's stdout or stderr kept (the last ones); the rest is counted
/// and dropped as it is read, so a chatty program costs no memory and its output cannot
/// flood the decision log.
pub const OUTPUT_LIMIT: usize = 4096;

/// Variables of coalmine's own environment every program it starts inherits (plus every
/// `LC_*`); everything else is cleared, so tokens in the environment stay with coalmine.
/// A policy passes more by name with `env = ["NAME"]`; the variables named by `token_env`
/// are never passed.
pub const INHERITED: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR"];

/// The environment of a program: [`INHERITED`], `LC_*`, the names in `pass` (from
/// coalmine's environment), then `set` (the `COALMINE_*` variables); never a variable that
/// holds a token (by name or by value).
#[must_use]
pub fn child_env(pass: &[String], set: &[(String, String)]) -> Vec<(String, String)> {
    let secret_names = crate::redact::secret_env_names();
    let mut out: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| {
            INHERITED.contains(&k.as_str()) || k.starts_with("LC_") || pass.contains(k)
        })
        .filter(|(k, v)| !secret_names.contains(k) && !crate::redact::holds_secret(v))
        .collect();
    out.extend(set.iter().cloned());
    out
}

/// Reads all of `r`, keeping the last [`OUTPUT_LIMIT`] bytes and counting the others.
async fn read_capped(r: Option<impl tokio::io::AsyncRead + Unpin>) -> (Vec<u8>, u64) {
    use tokio::io::AsyncReadExt;
    let Some(mut r) = r else {
        return (Vec::new(), 0);
    };
    let mut kept: Vec<u8> = Vec::with_capacity(OUTPUT_LIMIT);
    let mut cut = 0u64;
    // On the heap: a buffer in the future would make every caller's future this large.
    let mut chunk = vec![0u8; 8192];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > 2 * OUTPUT_LIMIT {
                    let drop = kept.len() - OUTPUT_LIMIT;
                    kept.drain(..drop);
                    cut += drop as u64;
                }
            }
        }
    }
    if kept.len() > OUTPUT_LIMIT {
        let drop = kept.len() - OUTPUT_LIMIT;
        kept.drain(..drop);
        cut += drop as u64;
    }
    (kept, cut)
}

/// Captured output as text for messages and records: control characters escaped, secrets
/// masked, and `… (N bytes cut)` in front when it was longer than [`OUTPUT_LIMIT`].
#[must_use]
pub fn shown_output(bytes: &[u8], cut: u64) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = crate::redact::text(text.trim()).replace('\n', " | ");
    let text = crate::policy::diag::escape_controls(&text).into_owned();
    if cut > 0 {
        format!("… ({cut} bytes cut) {text}")
    } else {
        text
    }
}

/// Runs `argv` with a time limit; classifies every way it can fail.
///
/// # Errors
/// [`TrafficError::Rejected`] when the program cannot be started or fails with an exit
/// code not in `transient`; [`TrafficError::Unavailable`] for an exit code in `transient`;
/// [`TrafficError::Timeout`] when it runs longer than `timeout` (it is killed).
pub async fn run(
    provider: &'static str,
    argv: &[String],
    timeout: Duration,
    transient: &[i32],
) -> Result<Finished, TrafficError> {
    run_with_env(provider, argv, timeout, transient, &[], &[]).await
}

/// [`run`] with extra environment variables set (`env`) and passed from coalmine's
/// environment (`pass`); see [`child_env`].
///
/// # Errors
/// As [`run`].
pub async fn run_with_env(
    provider: &'static str,
    argv: &[String],
    timeout: Duration,
    transient: &[i32],
    env: &[(String, String)],
    pass: &[String],
) -> Result<Finished, TrafficError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(TrafficError::Rejected {
            provider,
            message: "empty command".to_string(),
        });
    };
    settle_killed(SETTLE_LIMIT).await;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(child_env(pass, env))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command.spawn().map_err(|e| TrafficError::Rejected {
        provider,
        message: format!("cannot run `{program}`: {e}"),
    })?;
    let mut group = GroupGuard(child.id());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let finished = async {
        let ((out, out_cut), (err, err_cut)) =
            tokio::join!(read_capped(stdout), read_capped(stderr));
        (child.wait().await, out, out_cut, err, err_cut)
    };
    let out = tokio::time::timeout(timeout, finished).await;
    if out.is_ok() {
        // Finished on its own: whatever it left running in the background is its business.
        group.0 = None;
    }
    let (status, stdout, out_cut, stderr, err_cut) = match out {
        Ok((Ok(status), o, oc, e, ec)) => (status, o, oc, e, ec),
        Ok((Err(e), ..)) => {
            return Err(TrafficError::Unavailable {
                provider,
                message: format!("waiting for `{program}`: {e}"),
            });
        }
        Err(_) => {
            return Err(TrafficError::Timeout {
                provider,
                after: timeout,
            });
        }
    };
    if status.success() {
        return Ok(Finished {
            stdout: if out_cut > 0 {
                shown_output(&stdout, out_cut)
            } else {
                String::from_utf8_lossy(&stdout).into_owned()
            },
        });
    }
    let said = if stderr.iter().all(u8::is_ascii_whitespace) {
        String::new()
    } else {
        format!(": {}", excerpt(&shown_output(&stderr, err_cut), 1000))
    };
    let message = format!("`{program}` failed ({status}){said}");
    match status.code() {
        Some(code) if transient.contains(&code) => {
            Err(TrafficError::Unavailable { provider, message })
        }
        _ => Err(TrafficError::Rejected { provider, message }),
    }
}

/// Parses a percentage printed by a read-back command or returned by a service.
#[must_use]
pub fn parse_percent(text: &str) -> Option<Weight> {
    let t = text.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim();
    Weight::try_from_percent(t.parse::<f64>().ok()?).ok()
}

/// The `exec` provider.
#[derive(Debug)]
pub struct ExecProvider {
    cfg: ExecConfig,
    last: LastApplied,
}

impl ExecProvider {
    /// A provider for `cfg`.
    #[must_use]
    pub fn new(cfg: &ExecConfig) -> Self {
        ExecProvider {
            cfg: cfg.clone(),
            last: LastApplied::default(),
        }
    }
}

impl TrafficProvider for ExecProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn current(&self) -> Result<Weight, TrafficError> {
        let Some(read) = &self.cfg.read_command else {
            return self.last.get(NAME, "read_command");
        };
        let out = run_with_env(
            NAME,
            read,
            self.cfg.timeout,
            &self.cfg.transient_exit_codes,
            &[],
            &self.cfg.env,
        )
        .await?;
        parse_percent(&out.stdout).ok_or_else(|| TrafficError::Rejected {
            provider: NAME,
            message: format!(
                "`{}` printed `{}`, expected a percentage such as 25 or 12.5",
                read[0],
                excerpt(&out.stdout, 200)
            ),
        })
    }

    async fn set_weight(&self, weight: Weight) -> Result<(), TrafficError> {
        let weight = quantize(weight, self.cfg.resolution);
        let vars = weight_vars(weight);
        let argv = self
            .cfg
            .command
            .iter()
            .map(|t| t.render(&vars))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| TrafficError::Rejected {
                provider: NAME,
                message: format!("command: {e}"),
            })?;
        run_with_env(
            NAME,
            &argv,
            self.cfg.timeout,
            &self.cfg.transient_exit_codes,
            &[],
            &self.cfg.env,
        )
        .await?;
        self.last.set(weight);
        Ok(())
    }

    /// Runs `read_command` when there is one; otherwise checks that the program exists.
    async fn preflight(&self) -> Result<(), TrafficError> {
        if self.cfg.read_command.is_some() {
            return self.current().await.map(|_| ());
        }
        let program = self.cfg.command[0].as_str();
        let path = std::path::Path::new(program);
        let found = if program.contains('/') {
            path.is_file()
        } else {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(path).is_file()))
        };
        if found {
            Ok(())
        } else {
            Err(TrafficError::Rejected {
                provider: NAME,
                message: format!("program `{program}` not found"),
            })
        }
    }

    fn resolution(&self) -> u16 {
        self.cfg.resolution.bp()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::Template;
    use crate::traffic::conformance;

    /// Writes an executable script (the test may use a shell; the provider never does).
    fn script(dir: &Path, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    }

    fn config(command: &[&str], read: Option<&str>) -> ExecConfig {
        ExecConfig {
            command: command
                .iter()
                .map(|a| Template::parse(a).unwrap())
                .collect(),
            read_command: read.map(|r| vec![r.to_string()]),
            timeout: Duration::from_secs(5),
            resolution: Weight::try_from_bp(1).unwrap(),
            transient_exit_codes: vec![75],
            env: Vec::new(),
        }
    }

    #[tokio::test]
    async fn output_is_capped_and_the_environment_cleared() {
        // 100 000 bytes of output: the last 4 KiB are kept, the rest counted.
        let argv: Vec<String> = ["sh", "-c", "yes 0123456789 | head -c 100000"]
            .iter()
            .map(ToString::to_string)
            .collect();
        let out = run("exec", &argv, Duration::from_secs(10), &[])
            .await
            .unwrap();
        assert!(
            out.stdout
                .starts_with(&format!("… ({} bytes cut) ", 100_000 - OUTPUT_LIMIT)),
            "{}",
            &out.stdout[..80]
        );
        assert!(out.stdout.len() < OUTPUT_LIMIT * 2);
        // Only the inherited few, the passed and the set variables reach the program.
        let env = child_env(
            &["CARGO_PKG_NAME".to_string()],
            &[("COALMINE_X".into(), "1".into())],
        );
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"COALMINE_X"));
        assert!(
            names.iter().all(|n| INHERITED.contains(n)
                || n.starts_with("LC_")
                || ["CARGO_PKG_NAME", "COALMINE_X"].contains(n)),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn conformance_with_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("weight");
        let set = script(
            dir.path(),
            "set",
            &format!("echo \"$1\" > {}.tmp && mv {0}.tmp {0}", state.display()),
        );
        let get = script(dir.path(), "get", &format!("cat {}", state.display()));
        let p = ExecProvider::new(&config(&[&set, "{{percent}}"], Some(&get)));
        let failures = conformance::check(&p, Weight::try_from_bp(1).unwrap()).await;
        assert!(failures.is_empty(), "{failures:#?}");
        p.set_weight(Weight::try_from_bp(1250).unwrap())
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&state).unwrap(), "12.5\n");
        p.preflight().await.unwrap();
        // Without read-back: the last weight set.
        let p = ExecProvider::new(&config(&[&set, "{{weight}}"], None));
        assert!(p.current().await.is_err());
        p.set_weight(Weight::try_from_bp(700).unwrap())
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&state).unwrap(), "700\n");
        assert_eq!(p.current().await.unwrap().bp(), 700);
        let failures = conformance::check(&p, Weight::try_from_bp(1).unwrap()).await;
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[tokio::test]
    async fn arguments_are_never_split_by_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("args");
        let set = script(
            dir.path(),
            "set",
            &format!("printf '%s|' \"$@\" > {}", out.display()),
        );
        let p = ExecProvider::new(&config(
            &[&set, "a b; echo x", "--pct={{percent}}", "$HOME"],
            None,
        ));
        p.set_weight(Weight::try_from_bp(2500).unwrap())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "a b; echo x|--pct=25|$HOME|"
        );
    }

    #[tokio::test]
    async fn errors_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let busy = script(dir.path(), "busy", "echo 'lock held' >&2; exit 75");
        let p = ExecProvider::new(&config(&[&busy, "{{percent}}"], Some(&busy)));
        assert!(conformance::check_failure(&p, true).await.is_empty());
        let e = p.set_weight(Weight::FULL).await.unwrap_err();
        assert!(
            e.to_string()
                .ends_with("failed (exit status: 75): lock held"),
            "{e}"
        );

        let bad = script(dir.path(), "bad", "echo 'no such flag' >&2; exit 2");
        let p = ExecProvider::new(&config(&[&bad], Some(&bad)));
        assert!(conformance::check_failure(&p, false).await.is_empty());

        let p = ExecProvider::new(&config(&["/nonexistent/set-weight"], None));
        let failures = conformance::check_failure(&p, false).await;
        assert!(failures.is_empty(), "{failures:?}");
        assert!(p.preflight().await.is_err());

        let garbage = script(dir.path(), "garbage", "echo lots");
        let p = ExecProvider::new(&config(&[&garbage], Some(&garbage)));
        let e = p.current().await.unwrap_err();
        assert!(
            e.to_string()
                .contains("printed `lots`, expected a percentage"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_slow_program_times_out_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("finished");
        let slow = script(
            dir.path(),
            "slow",
            &format!("sleep 2; touch {}", marker.display()),
        );
        let mut cfg = config(&[&slow], None);
        cfg.timeout = Duration::from_millis(200);
        let p = ExecProvider::new(&cfg);
        let e = p.set_weight(Weight::FULL).await.unwrap_err();
        assert_eq!(e.kind(), "timeout");
        assert!(e.is_transient());
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the timed-out program was not killed");
    }

    #[tokio::test]
    async fn the_next_program_waits_for_a_killed_group_to_be_gone() {
        // A group listed as killed whose member still runs (as when SIGKILL has not landed
        // yet): the next program starts only once it is gone. Its leader stays a zombie
        // (never waited for here), which must not count as running.
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("done");
        let mut leader = {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("sh")
                .args(["-c", &format!("sleep 0.3; touch {}", marker.display())])
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let pgid = i32::try_from(leader.id()).unwrap();
        assert!(group_alive(pgid));
        KILLED.lock().unwrap().push(pgid);
        let argv: Vec<String> = ["test", "-e", &marker.display().to_string()]
            .iter()
            .map(ToString::to_string)
            .collect();
        run("exec", &argv, Duration::from_secs(10), &[])
            .await
            .expect("the next program started before the killed group was gone");
        // The leader is a zombie now (not waited for yet): not running.
        assert!(!group_alive(pgid), "a zombie counts as running");
        // Gone, so no longer listed (other tests' groups may be, at any moment).
        assert!(!KILLED.lock().unwrap().contains(&pgid));
        leader.wait().unwrap();
    }

    #[test]
    fn percent_parsing() {
        assert_eq!(parse_percent(" 25\n").unwrap().bp(), 2500);
        assert_eq!(parse_percent("12.5%").unwrap().bp(), 1250);
        assert!(parse_percent("101").is_none());
        assert!(parse_percent("NaN").is_none());
        assert!(parse_percent("").is_none());
    }
}
