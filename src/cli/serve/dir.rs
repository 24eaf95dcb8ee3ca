//! `coalmine serve --watch DIR`: the policies in a directory, applied as they appear or
//! change. Once a second the `*.toml` files are read and hashed (a policy is at most
//! 1 MiB); a new content is applied as `coalmine apply` would, except that a rollout that
//! already finished with the same content is not run again. A changed policy of a running
//! rollout is refused (never hot-swapped) and the reason logged, once per content.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::daemon::{Build, Daemon, Role};
use crate::controller::store::{Store, policy_sha256};

/// The `*.toml` files of `dir` with their contents (unreadable ones are skipped, with a
/// warning once per error).
fn scan(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    use std::io::Read as _;
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "toml") || !p.is_file() {
            continue;
        }
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&p).and_then(|f| {
            f.take(crate::policy::MAX_POLICY_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        });
        if read.is_ok() {
            out.push((p, bytes));
        }
    }
    out.sort();
    Ok(out)
}

/// Applies the directory's policies once a second, forever.
pub(crate) async fn watch<S: Store + 'static, B: Build>(d: Arc<Daemon<S, B>>, dir: PathBuf) {
    let mut seen: HashMap<PathBuf, String> = HashMap::new();
    let mut listed_error = None;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if d.role() != Role::Leader {
            continue;
        }
        let d2 = dir.clone();
        let files = match tokio::task::spawn_blocking(move || scan(&d2)).await {
            Ok(Ok(f)) => {
                listed_error = None;
                f
            }
            Ok(Err(e)) => {
                if listed_error.as_ref() != Some(&e) {
                    errln!("coalmine serve: --watch: {e}");
                    listed_error = Some(e);
                }
                continue;
            }
            Err(_) => continue,
        };
        for (path, bytes) in files {
            let sha = policy_sha256(&bytes);
            if seen.get(&path) == Some(&sha) {
                continue;
            }
            let shown =
                crate::policy::diag::escape_controls(&path.display().to_string()).into_owned();
            let Ok(text) = String::from_utf8(bytes) else {
                errln!("coalmine serve: --watch: {shown} is not UTF-8; not applied");
                seen.insert(path, sha);
                continue;
            };
            match d
                .apply(&text, Some(path.display().to_string()), false)
                .await
            {
                Ok(s) => errln!(
                    "coalmine serve: --watch: {shown}: rollout `{}` {} (run {})",
                    s.rollout,
                    s.how,
                    s.rollout_id
                ),
                // Not the leader any more: try again once it is.
                Err(r) if r.status == 503 => continue,
                Err(r) => errln!("coalmine serve: --watch: {shown}: refused: {}", r.message),
            }
            seen.insert(path, sha);
        }
    }
}
