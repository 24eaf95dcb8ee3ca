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
/// otherwise survive the script being killed, and race with the next call).
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
        }
    }
}

/// What a finished program left.
#[derive(Debug)]
pub struct Finished {
    /// Its stdout.
    pub stdout: String,
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
    run_with_env(provider, argv, timeout, transient, &[]).await
}

/// [`run`] with extra environment variables for the program.
///
/// # Errors
/// As [`run`].
pub async fn run_with_env(
    provider: &'static str,
    argv: &[String],
    timeout: Duration,
    transient: &[i32],
    env: &[(String, String)],
) -> Result<Finished, TrafficError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(TrafficError::Rejected {
            provider,
            message: "empty command".to_string(),
        });
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let child = command.spawn().map_err(|e| TrafficError::Rejected {
        provider,
        message: format!("cannot run `{program}`: {e}"),
    })?;
    let mut group = GroupGuard(child.id());
    let out = tokio::time::timeout(timeout, child.wait_with_output()).await;
    if out.is_ok() {
        // Finished on its own: whatever it left running in the background is its business.
        group.0 = None;
    }
    let out = match out {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
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
    if out.status.success() {
        return Ok(Finished {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        });
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", excerpt(&stderr, 1000))
    };
    let message = format!("`{program}` failed ({}){said}", out.status);
    match out.status.code() {
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
        let out = run(NAME, read, self.cfg.timeout, &self.cfg.transient_exit_codes).await?;
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
        run(
            NAME,
            &argv,
            self.cfg.timeout,
            &self.cfg.transient_exit_codes,
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
        }
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

    #[test]
    fn percent_parsing() {
        assert_eq!(parse_percent(" 25\n").unwrap().bp(), 2500);
        assert_eq!(parse_percent("12.5%").unwrap().bp(), 1250);
        assert!(parse_percent("101").is_none());
        assert!(parse_percent("NaN").is_none());
        assert!(parse_percent("").is_none());
    }
}
