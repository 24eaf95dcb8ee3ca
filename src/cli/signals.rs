//! The one place that handles signals.
//!
//! The first SIGINT (Ctrl-C), SIGTERM or SIGHUP (a closed SSH session) aborts the rollout:
//! it rolls back to 0 % and ends with its final record, as any abort does. While that
//! rollback runs, a second signal says what is going on and a third quits at once, exit 3,
//! saying what state traffic may be in: the weight coalmine last saw in force and the
//! phase it was in (a rollback whose provider call hangs is bounded by `apply_timeout`, but
//! an operator may not want to wait for it).

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::EXIT_FAILURE;
use crate::controller::{Observer, Record};

/// The last record's weight in force, the phase it went to, and its time.
#[derive(Clone, Debug)]
struct Seen {
    weight: String,
    phase: &'static str,
    time: String,
}

/// What the controller last recorded, for a quit before the rollout ended.
#[derive(Clone, Debug, Default)]
pub(crate) struct TrafficState(Arc<Mutex<Option<Seen>>>);

impl TrafficState {
    /// A sentence on what traffic may be in, for a quit before the rollout ended.
    pub(crate) fn describe(&self) -> String {
        let seen = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        match seen {
            Some(Seen {
                weight,
                phase,
                time,
            }) => format!(
                "the canary weight may still be {weight} (last in force at {time}, phase \
                 {phase}); check the traffic provider and set it to 0% by hand if needed"
            ),
            None => "no traffic had been moved yet".to_string(),
        }
    }
}

impl Observer for TrafficState {
    fn on_record(&mut self, r: &Record) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(Seen {
                weight: r.weight.to_string(),
                phase: r.next_phase,
                time: r.time.clone(),
            });
        }
    }
}

/// A signal that ends the rollout, and what the abort records as its cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGINT.
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGHUP.
    Hangup,
}

impl Stop {
    fn reason(self) -> &'static str {
        match self {
            Stop::Interrupt => "interrupted (Ctrl-C)",
            Stop::Terminate => "terminated (SIGTERM)",
            Stop::Hangup => "hangup (SIGHUP): the terminal or SSH session closed",
        }
    }
}

/// What to do on the n-th stopping signal (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Response {
    /// Abort the rollout with this reason (it rolls back).
    Abort(String),
    /// Say that the rollback is still running.
    Remind,
    /// Quit now.
    Quit,
}

/// The response to the `n`-th signal.
#[must_use]
pub(crate) fn respond(n: u32, sig: Stop) -> Response {
    match n {
        0 | 1 => Response::Abort(sig.reason().to_string()),
        2 => Response::Remind,
        _ => Response::Quit,
    }
}

/// SIGTERM and SIGHUP streams (Ctrl-C is watched through tokio's portable call).
#[cfg(unix)]
struct Watch {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Watch {
    fn new() -> Option<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Watch {
            term: signal(SignalKind::terminate()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }

    async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Stop::Interrupt,
            _ = self.term.recv() => Stop::Terminate,
            _ = self.hup.recv() => Stop::Hangup,
        }
    }
}

/// The next stopping signal; `signals` is `None` where they cannot be watched (Ctrl-C only).
async fn next(#[cfg(unix)] signals: &mut Option<Watch>) -> Stop {
    #[cfg(unix)]
    if let Some(w) = signals.as_mut() {
        return w.next().await;
    }
    let _ = tokio::signal::ctrl_c().await;
    Stop::Interrupt
}

/// Turns the first SIGINT, SIGTERM or SIGHUP into an abort on `tx` (the rollout rolls
/// back); the second says the rollback is still running, the third exits at once (exit 3)
/// with `state`'s account of where traffic may be.
pub(crate) fn watch_signals(tx: watch::Sender<Option<String>>, state: TrafficState) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut w = Watch::new();
        let mut n = 0;
        loop {
            let sig = next(
                #[cfg(unix)]
                &mut w,
            )
            .await;
            n += 1;
            match respond(n, sig) {
                Response::Abort(why) => {
                    errln!("coalmine: {why}: rolling back (a third signal quits at once)");
                    let _ = tx.send(Some(why));
                }
                Response::Remind => {
                    errln!(
                        "coalmine: still rolling back; {}; one more signal quits without waiting",
                        state.describe()
                    );
                }
                Response::Quit => {
                    errln!(
                        "coalmine: quit before the rollout ended: {}",
                        state.describe()
                    );
                    std::process::exit(i32::from(EXIT_FAILURE));
                }
            }
        }
    });
}

/// Sends the first SIGINT, SIGTERM or SIGHUP's reason on `tx`, for commands that only need
/// to stop (the demo's services).
pub(crate) fn stop_on_signal(tx: watch::Sender<Option<String>>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut w = Watch::new();
        let sig = next(
            #[cfg(unix)]
            &mut w,
        )
        .await;
        let _ = tx.send(Some(sig.reason().to_string()));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_signal_aborts_second_reminds_third_quits() {
        for sig in [Stop::Interrupt, Stop::Terminate, Stop::Hangup] {
            assert!(matches!(respond(1, sig), Response::Abort(_)));
            assert_eq!(respond(2, sig), Response::Remind);
            assert_eq!(respond(3, sig), Response::Quit);
            assert_eq!(respond(7, sig), Response::Quit);
        }
        assert_eq!(
            respond(1, Stop::Hangup),
            Response::Abort("hangup (SIGHUP): the terminal or SSH session closed".into())
        );
    }

    #[test]
    fn the_state_names_the_last_weight_in_force() {
        let s = TrafficState::default();
        assert_eq!(s.describe(), "no traffic had been moved yet");
        *s.0.lock().unwrap() = Some(Seen {
            weight: "25%".into(),
            phase: "rolling-back",
            time: "2026-12-01T10:00:00Z".into(),
        });
        let d = s.describe();
        assert!(d.starts_with("the canary weight may still be 25% "), "{d}");
        assert!(d.contains("phase rolling-back"), "{d}");
    }
}
