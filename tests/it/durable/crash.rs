//! Durable rollouts under SIGKILL (issue 11): `coalmine run` with the `exec` provider and
//! with the `http` provider (a fake flag service), killed in every phase and restarted until
//! the rollout finishes. The kills follow a seeded schedule keyed to what the test sees: the
//! pre-rollout hook running (the checks, before any traffic moved), a weight change under
//! way after its record was written (before it landed, and after it landed but before the
//! controller knew), mid-step, the rollback's change, and a rollout an operator paused. A
//! change killed before it landed is cancelled (its client died with it), so the restart
//! must set it again; one that landed must not be set twice.
//!
//! Asserts: the weight in force at the end is 0 or 100; the outcome is the uninterrupted
//! run's; the provider's call log is the uninterrupted run's (no step repeated, none
//! skipped); every restart wrote one `resumed` record; the decision log parses. Prints the
//! kills per phase.

// Real processes on the wall clock: plain blocking test code.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use super::rig::{Opts, Provider, Rig, finish, out};

const NAME: &str = "crash";

/// A tiny seeded generator (xorshift64*): the kill moments are reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Where the schedule wants the next kill (or the next operator action).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    /// The pre-rollout hook is running: nothing has moved yet.
    Hook,
    /// The change to `percent` is under way: not landed yet, or landed.
    Apply { percent: &'static str, landed: bool },
    /// Progressing at this step (1-based), a random moment into it.
    Mid { step: u64 },
    /// `coalmine pause` through the CLI (no kill).
    Pause,
    /// Paused, with the controller of this start serving it.
    Paused,
    /// `coalmine resume` through the CLI (no kill).
    Resume,
}

impl Target {
    /// How far into the rollout the target lies (see [`Seen::rank`]).
    fn rank(self) -> u8 {
        match self {
            Target::Hook => 0,
            Target::Apply { percent: "10", .. } => 1,
            Target::Mid { step: 1 } | Target::Pause | Target::Paused | Target::Resume => 2,
            Target::Apply { percent: "50", .. } => 3,
            Target::Mid { .. } => 4,
            Target::Apply { .. } => 5,
        }
    }
}

/// What the test sees of a running controller.
#[derive(Debug)]
struct Seen {
    phase: String,
    step: Option<u64>,
    pid: Option<u64>,
    setting: Option<(String, bool)>,
    hook: bool,
}

impl Seen {
    fn of(rig: &Rig) -> Seen {
        let v = rig.stored(NAME);
        let phase = v.as_ref().map_or_else(
            || "none".to_string(),
            |v| v["phase"]["phase"].as_str().unwrap_or("?").to_string(),
        );
        let step = v.as_ref().and_then(|v| {
            v["phase"]["step"]
                .as_u64()
                .or(v["phase"]["progress"]["step"].as_u64())
                .map(|s| s + 1)
        });
        Seen {
            phase,
            step,
            pid: v.as_ref().and_then(|v| v["control"]["pid"].as_u64()),
            setting: rig.setting(),
            hook: rig.in_hook(),
        }
    }

    /// How far the rollout is: 0 checks, 1 setting 10 %, 2 at 10 % (or paused), 3 setting
    /// 50 %, 4 at 50 %, 5 the last change (100 % or 0 %), 6 ended.
    fn rank(&self) -> u8 {
        if self.hook {
            return 0;
        }
        if let Some((w, _)) = &self.setting {
            return match w.as_str() {
                "10" => 1,
                "50" => 3,
                _ => 5,
            };
        }
        match (self.phase.as_str(), self.step) {
            ("shifting", Some(1)) => 1,
            ("progressing" | "paused", Some(1)) => 2,
            ("shifting", Some(2)) => 3,
            ("progressing" | "paused", Some(2)) => 4,
            ("shifting" | "promoting" | "rolling-back", _) => 5,
            ("promoted" | "rolled-back" | "failed" | "not-started", _) => 6,
            _ => 0,
        }
    }

    fn is(&self, t: Target, pid: u32) -> bool {
        let mine = self.pid == Some(u64::from(pid));
        match t {
            Target::Hook => self.hook && self.phase == "pre-checks",
            Target::Apply { percent, landed } => self
                .setting
                .as_ref()
                .is_some_and(|(w, l)| w == percent && *l == landed),
            Target::Mid { step } => {
                mine && self.phase == "progressing"
                    && self.step == Some(step)
                    && self.setting.is_none()
            }
            Target::Pause => mine && self.phase == "progressing" && self.step == Some(1),
            Target::Paused | Target::Resume => mine && self.phase == "paused",
        }
    }
}

/// What one scenario did.
struct Killed {
    outcome: String,
    kills: usize,
    /// Kills by where they landed: the stored phase, and `:hook`, `:before-apply` or
    /// `:after-apply` when the hook or a weight change was under way.
    at: BTreeMap<String, usize>,
    missed: usize,
    rig: Rig,
}

fn opts(provider: Provider, canary_rate: f64) -> Opts {
    Opts {
        provider,
        canary_rate,
        step_duration: "2s",
        apply_ms: 150,
        hook_ms: Some(300),
        ..Opts::default()
    }
}

/// Kills the controller and lets what it started finish (a change killed before it
/// landed is cancelled); returns where the kill landed.
fn kill(rig: &Rig, child: &mut Child) -> String {
    let calls = rig.calls().len();
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let seen = Seen::of(rig);
    if matches!(&seen.setting, Some((_, false))) {
        // The client died with the request: the change does not land.
        std::fs::write(rig.path("cancel"), "").unwrap();
    }
    let t = Instant::now();
    while rig.setting().is_some() || rig.in_hook() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the provider never finished"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_file(rig.path("cancel"));
    let suffix = if seen.hook {
        ":hook"
    } else if let Some((_, landed)) = seen.setting {
        if landed || rig.calls().len() > calls {
            ":after-apply"
        } else {
            ":before-apply"
        }
    } else {
        ""
    };
    let w = rig.weight();
    assert!(
        ["0", "10", "50", "100"].contains(&w.as_str()),
        "weight {w} in force"
    );
    format!("{}{suffix}", seen.phase)
}

/// Runs one rollout to its end through the schedule `plan` (targets and how often).
fn killed_rollout(o: &Opts, plan: &[(Target, usize)], rng: &mut Rng) -> Killed {
    let rig = Rig::new(NAME, o);
    let mut plan: Vec<(Target, usize)> = plan.to_vec();
    let (mut kills, mut missed) = (0, 0);
    let mut at = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut child = rig.start();
        let mut armed: Option<Instant> = None;
        let killed = loop {
            assert!(
                Instant::now() < deadline,
                "the rollout did not finish in time"
            );
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            let Some(i) = plan.iter().position(|(_, n)| *n > 0) else {
                break false;
            };
            let target = plan[i].0;
            let seen = Seen::of(&rig);
            if seen.is(target, child.id()) {
                match target {
                    Target::Pause | Target::Resume => {
                        let verb = if target == Target::Pause {
                            "pause"
                        } else {
                            "resume"
                        };
                        let (code, _, err) =
                            out(&rig.verb(&[verb, NAME, "--reason", "crash test"]));
                        assert_eq!(code, 0, "{verb}: {err}");
                        let t = Instant::now();
                        let want = if target == Target::Pause {
                            "paused"
                        } else {
                            "progressing"
                        };
                        while Seen::of(&rig).phase != want {
                            assert!(t.elapsed() < Duration::from_secs(10), "never {want}");
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        plan[i].1 = 0;
                        continue;
                    }
                    Target::Paused => {
                        // Nothing moved while paused, across every restart.
                        assert_eq!(rig.weight(), "10");
                        assert_eq!(rig.calls(), ["10"]);
                    }
                    Target::Mid { .. } => {
                        let when = *armed.get_or_insert_with(|| {
                            Instant::now() + Duration::from_millis(rng.below(300))
                        });
                        if Instant::now() < when {
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                    }
                    Target::Hook | Target::Apply { .. } => {}
                }
                *at.entry(kill(&rig, &mut child)).or_insert(0) += 1;
                kills += 1;
                plan[i].1 -= 1;
                break true;
            }
            armed = None;
            if seen.rank() > target.rank() {
                // Gone past it (a step ended, the rollback came early): the next target.
                missed += plan[i].1;
                plan[i].1 = 0;
                continue;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if killed {
            continue;
        }
        let (code, summary, err) = finish(child);
        assert!(
            code == 0 || code == 1,
            "run exited {code}: {err}\n{}",
            lock_diagnostics()
        );
        let outcome = if summary.is_null() {
            // Ended right after a restart that found it finished.
            assert!(err.contains("already finished"), "{err}");
            if code == 0 { "promoted" } else { "rolled-back" }.to_string()
        } else {
            summary["outcome"].as_str().unwrap_or("?").to_string()
        };
        return Killed {
            outcome,
            kills,
            at,
            missed,
            rig,
        };
    }
}

fn apply(percent: &'static str, n: usize) -> [(Target, usize); 2] {
    [
        (
            Target::Apply {
                percent,
                landed: false,
            },
            n,
        ),
        (
            Target::Apply {
                percent,
                landed: true,
            },
            n,
        ),
    ]
}

/// Every scenario of one provider; returns (kills, kills per phase).
fn provider_scenarios(provider: Provider, seed: u64) -> (usize, BTreeMap<String, usize>) {
    let mut rng = Rng(seed);
    let mut total = 0;
    let mut all: BTreeMap<String, usize> = BTreeMap::new();
    let good: Vec<(Target, usize)> = [(Target::Hook, 3)]
        .into_iter()
        .chain(apply("10", 2))
        .chain([(Target::Mid { step: 1 }, 4)])
        .chain(apply("50", 2))
        .chain([(Target::Mid { step: 2 }, 4)])
        .chain(apply("100", 2))
        .collect();
    let bad: Vec<(Target, usize)> = [(Target::Hook, 1)]
        .into_iter()
        .chain(apply("10", 1))
        .chain([(Target::Mid { step: 1 }, 2)])
        .chain(apply("50", 1))
        .chain([(Target::Mid { step: 2 }, 2)])
        .chain(apply("0", 2))
        .collect();
    let paused: Vec<(Target, usize)> = vec![
        (Target::Mid { step: 1 }, 1),
        (Target::Pause, 1),
        (Target::Paused, 4),
        (Target::Resume, 1),
        (Target::Mid { step: 1 }, 1),
    ];
    for (rate, plan, name) in [
        (0.01, &good, "promoted"),
        (0.2, &bad, "rolled-back"),
        (0.01, &paused, "paused, then promoted"),
    ] {
        let o = opts(provider, rate);
        // The uninterrupted run of the same inputs.
        let clean = killed_rollout(&o, &[], &mut rng);
        assert!(
            clean.outcome == "promoted" || clean.outcome == "rolled-back",
            "{}",
            clean.outcome
        );
        assert_eq!(clean.outcome == "promoted", rate < 0.1, "{name}");
        let clean_calls = clean.rig.calls();
        let k = killed_rollout(&o, plan, &mut rng);
        assert_eq!(
            k.outcome, clean.outcome,
            "{provider:?} {name}: the uninterrupted run's outcome"
        );
        let w = k.rig.weight();
        assert!(w == "0" || w == "100", "weight {w} in force at the end");
        assert_eq!(w == "100", k.outcome == "promoted");
        // No step repeated, none skipped: the provider saw what it saw without the kills.
        assert_eq!(
            k.rig.calls(),
            clean_calls,
            "{provider:?} {name}: the call log"
        );
        let records = k.rig.records();
        assert!(
            records
                .iter()
                .all(|r| r["rollout_id"] == records[0]["rollout_id"])
        );
        let resumed = k.rig.records_of("resumed").len();
        assert_eq!(resumed, k.kills, "one resumed record per restart");
        eprintln!(
            "{provider:?} {name}: {} kills ({} targets passed by), at {:?}; weights set {clean_calls:?}, {} records",
            k.kills,
            k.missed,
            k.at,
            records.len()
        );
        total += k.kills;
        for (p, n) in k.at {
            *all.entry(p).or_insert(0) += n;
        }
    }
    (total, all)
}

#[test]
fn sigkill_in_every_phase_never_strands_traffic_nor_repeats_a_step() {
    let runs: Vec<_> = [
        (Provider::Exec, 0x00c0_a1a1_11e5_eed5),
        (Provider::Http, 0x005e_ed0f_f1a6),
    ]
    .into_iter()
    .map(|(p, seed)| (p, std::thread::spawn(move || provider_scenarios(p, seed))))
    .collect();
    let mut total = 0;
    for (provider, run) in runs {
        let (kills, at) = run.join().unwrap();
        eprintln!("{provider:?}: {kills} kills, by phase {at:?}");
        let count = |prefix: &str| {
            at.iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, n)| n)
                .sum::<usize>()
        };
        for phase in [
            "pre-checks:hook",
            "shifting:before-apply",
            "shifting:after-apply",
            "progressing",
            "promoting",
            "rolling-back",
            "paused",
        ] {
            assert!(count(phase) > 0, "{provider:?}: no kill in {phase}: {at:?}");
        }
        total += kills;
    }
    eprintln!("total: {total} kills");
    assert!(total >= 50, "{total} kills");
}

/// For a restart refused as a second controller: who holds flocks, and which processes run
/// (the killed controller was waited for, so the holder is what this is meant to find).
fn lock_diagnostics() -> String {
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let ps = std::process::Command::new("ps")
        .args(["-eo", "pid,ppid,stat,args"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    format!("/proc/locks:\n{locks}\nprocesses:\n{ps}")
}
