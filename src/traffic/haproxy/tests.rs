//! Unit tests of the weight mapping and the answers' parsing, and component tests against
//! a fake runtime API that answers like HAProxy 2.6.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::*;
use crate::policy::HaproxySocket;
use crate::traffic::conformance;

#[test]
fn mapping_is_closest_and_honest() {
    assert_eq!(server_weights(Weight::ZERO), (256, 0));
    assert_eq!(server_weights(Weight::FULL), (0, 256));
    assert_eq!(
        server_weights(Weight::try_from_percent(50.0).unwrap()),
        (256, 256)
    );
    // Exact shares use the largest pair (255:85 rather than 3:1) on ties.
    assert_eq!(
        server_weights(Weight::try_from_percent(25.0).unwrap()),
        (255, 85)
    );
    let (b, c) = server_weights(Weight::try_from_percent(5.0).unwrap());
    assert_eq!(share(b, c).unwrap().bp(), 500, "{b}/{c}");
    let res = resolution();
    // Near 0 % the nearest non-zero share is 1/257 ≈ 0.39 %: half of it is the worst error.
    assert!((15..=25).contains(&res), "resolution {res}");
    for bp in (0..=10_000).step_by(7) {
        let w = Weight::try_from_bp(bp).unwrap();
        let (b, c) = server_weights(w);
        assert!(b <= MAX_WEIGHT && c <= MAX_WEIGHT && b + c > 0);
        let got = share(b, c).unwrap();
        assert!(got.bp().abs_diff(w.bp()) <= res, "{w}: {b}/{c} = {got}");
    }
    assert_eq!(share(0, 0), None);
}

const STATE_HEADER: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status\n";

#[test]
fn parses_servers_state() {
    let answer = format!(
        "{STATE_HEADER}3 checkout 1 stable 127.0.0.1 2 0 236 256 8 1\n3 checkout 2 canary 127.0.0.1 0 1 20 0 1 1\n\n"
    );
    let stable = parse_servers_state(&answer, "stable").unwrap().unwrap();
    assert_eq!(stable.effective(), 236);
    let canary = parse_servers_state(&answer, "canary").unwrap().unwrap();
    assert_eq!(canary.weight, 20);
    assert_eq!(canary.effective(), 0);
    assert_eq!(canary.unavailable(), Some("in maintenance (MAINT)"));
    assert_eq!(parse_servers_state(&answer, "nope"), Ok(None));
    assert_eq!(
        parse_servers_state("Can't find backend.\n\n", "x"),
        Err("Can't find backend.".to_string())
    );
    assert!(parse_servers_state("1\n# srv_name\nx\n", "x").is_err());
    assert!(parse_servers_state("", "x").is_err());
    // Garbage never panics.
    for s in [
        "1\n#\n",
        "1\n# srv_name srv_uweight srv_admin_state srv_op_state\nx",
        "\u{0}",
    ] {
        let _ = parse_servers_state(s, "x");
    }
}

#[test]
fn parses_show_stat() {
    let answer = "# pxname,svname,eresp,status,weight,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,\n\
        fe,FRONTEND,,OPEN,,0,10,0,0,0,0,\n\
        checkout,stable,1,UP,200,0,90,0,3,2,0,\n\
        checkout,canary,0,MAINT,0,0,5,0,0,5,0,\n";
    let s = parse_show_stat(answer, "checkout", "stable")
        .unwrap()
        .unwrap();
    assert_eq!(
        s,
        ServerCounters {
            requests: 96,
            errors: 3,
            weight: 200
        }
    );
    let c = parse_show_stat(answer, "checkout", "canary")
        .unwrap()
        .unwrap();
    assert_eq!((c.requests, c.errors, c.weight), (10, 5, 0));
    assert_eq!(parse_show_stat(answer, "checkout", "x"), Ok(None));
    assert!(parse_show_stat("Permission denied\n", "a", "b").is_err());
    assert!(parse_show_stat("# pxname,svname\n", "a", "b").is_err());
}

/// What the fake does with the next connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// Answers like HAProxy.
    Normal,
    /// Accepts and never answers.
    Silent,
    /// Answers `Permission denied.` to `set` commands (a socket at `level user`).
    UserLevel,
}

#[derive(Debug)]
pub(crate) struct FakeState {
    pub(crate) servers: BTreeMap<String, (u16, u32)>,
    pub(crate) scenario: Scenario,
    pub(crate) commands: Vec<String>,
    /// `show stat` counters per server: 2xx responses, 5xx responses, effective weight.
    pub(crate) counters: BTreeMap<String, (u64, u64, u64)>,
}

/// A fake runtime API on a unix socket: backend `checkout`, servers `stable` and `canary`.
pub(crate) struct FakeHaproxy {
    pub(crate) socket: HaproxySocket,
    pub(crate) state: Arc<Mutex<FakeState>>,
    _dir: tempfile::TempDir,
}

fn answer(state: &Mutex<FakeState>, line: &str) -> Option<String> {
    let mut st = state.lock().unwrap();
    st.commands.push(line.to_string());
    match st.scenario {
        Scenario::Silent => return None,
        Scenario::UserLevel if line.starts_with("set ") => {
            return Some("Permission denied\n\n".to_string());
        }
        _ => {}
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    Some(match words.as_slice() {
        ["show", "servers", "state", "checkout"] => {
            let mut out = STATE_HEADER.to_string();
            for (i, (name, (w, admin))) in st.servers.iter().enumerate() {
                let op = if *admin & 1 == 1 { 0 } else { 2 };
                let _ = writeln!(
                    out,
                    "3 checkout {} {name} 127.0.0.1 {op} {admin} {w} 1 0 1",
                    i + 1
                );
            }
            out + "\n"
        }
        ["show", "servers", "state", _] => "Can't find backend.\n\n".to_string(),
        ["show", "stat"] => {
            let mut out = "# pxname,svname,qcur,stot,eresp,status,weight,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,\nfe,FRONTEND,0,0,,OPEN,,0,0,0,0,0,0,\n".to_string();
            for (name, (ok, errors, weight)) in &st.counters {
                let _ = writeln!(
                    out,
                    "checkout,{name},0,{},0,UP,{weight},0,{ok},0,0,{errors},0,",
                    ok + errors
                );
            }
            out + "\n"
        }
        ["set", "weight", target, w] => {
            let Some(("checkout", server)) = target.split_once('/') else {
                return Some("No such backend.\n\n".to_string());
            };
            let Ok(w) = w.parse::<u16>() else {
                return Some("Require <weight> or <weight%>.\n\n".to_string());
            };
            if w > 256 {
                return Some("Absolute weight can only be between 0 and 256 inclusive.\n\n".into());
            }
            match st.servers.get_mut(server) {
                Some(s) => {
                    s.0 = w;
                    "\n".to_string()
                }
                None => "No such server.\n\n".to_string(),
            }
        }
        _ => "Unknown command, but maybe one of the following ones is a better match:\n\n"
            .to_string(),
    })
}

impl FakeHaproxy {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let state = Arc::new(Mutex::new(FakeState {
            servers: [
                ("canary".to_string(), (0, 0)),
                ("stable".to_string(), (256, 0)),
            ]
            .into_iter()
            .collect(),
            scenario: Scenario::Normal,
            commands: Vec::new(),
            counters: BTreeMap::new(),
        }));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut line = String::new();
                    if BufReader::new(r).read_line(&mut line).await.is_err() {
                        return;
                    }
                    match answer(&st, line.trim_end()) {
                        Some(a) => {
                            let _ = w.write_all(a.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(3600)).await,
                    }
                });
            }
        });
        FakeHaproxy {
            socket: HaproxySocket::Unix(path),
            state,
            _dir: dir,
        }
    }

    pub(crate) fn config(&self) -> HaproxyConfig {
        HaproxyConfig {
            socket: self.socket.clone(),
            backend: "checkout".into(),
            baseline: "stable".into(),
            canary: "canary".into(),
            timeout: Duration::from_millis(500),
        }
    }

    fn set(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.state.lock().unwrap());
    }

    /// Sets a server's `show stat` counters: `requests` responses of which `errors` 5xx.
    pub(crate) fn set_counters(&self, server: &str, requests: u64, errors: u64, weight: u64) {
        self.set(|s| {
            s.counters
                .insert(server.to_string(), (requests - errors, errors, weight));
        });
    }
}

#[tokio::test]
async fn conformance_against_the_fake() {
    let fake = FakeHaproxy::start();
    let p = HaproxyProvider::new(&fake.config());
    let res = Weight::try_from_bp(u32::from(p.resolution())).unwrap();
    let failures = conformance::check(&p, res).await;
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(p.current().await.unwrap().bp(), 1000);
    assert_eq!(
        fake.state.lock().unwrap().servers["canary"].0,
        server_weights(Weight::try_from_bp(1000).unwrap()).1
    );
}

#[tokio::test]
async fn raises_before_lowering() {
    let fake = FakeHaproxy::start();
    let p = HaproxyProvider::new(&fake.config());
    p.set_weight(Weight::FULL).await.unwrap();
    p.set_weight(Weight::ZERO).await.unwrap();
    let cmds = fake.state.lock().unwrap().commands.clone();
    let sets: Vec<&str> = cmds
        .iter()
        .filter(|c| c.starts_with("set"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        sets,
        [
            "set weight checkout/canary 256",
            "set weight checkout/stable 0",
            "set weight checkout/stable 256",
            "set weight checkout/canary 0"
        ]
    );
}

#[tokio::test]
async fn maintenance_is_permanent_except_for_weight_zero() {
    let fake = FakeHaproxy::start();
    let p = HaproxyProvider::new(&fake.config());
    fake.set(|s| s.servers.get_mut("canary").unwrap().1 = 1);
    let e = p
        .set_weight(Weight::try_from_percent(25.0).unwrap())
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(
        e.to_string(),
        "provider `haproxy`: server `checkout/canary` is in maintenance (MAINT): it would take no traffic at canary weight 25%; bring it back with `set server checkout/canary state ready`"
    );
    // Rolling back with the canary in maintenance is fine: it takes no traffic.
    p.set_weight(Weight::ZERO).await.unwrap();
    assert_eq!(p.current().await.unwrap(), Weight::ZERO);
    // The baseline draining: only 100% is possible.
    fake.set(|s| {
        s.servers.get_mut("canary").unwrap().1 = 0;
        s.servers.get_mut("stable").unwrap().1 = 8;
    });
    let e = p
        .set_weight(Weight::try_from_percent(50.0).unwrap())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("server `checkout/stable` is draining (DRAIN)"),
        "{e}"
    );
    // Neither server takes traffic: read-back says so.
    fake.set(|s| s.servers.get_mut("canary").unwrap().1 = 1);
    let e = p.current().await.unwrap_err();
    assert!(!e.is_transient());
    assert!(
        e.to_string()
            .contains("no server of backend `checkout` takes traffic"),
        "{e}"
    );
}

#[tokio::test]
async fn errors_are_classified() {
    let fake = FakeHaproxy::start();
    let mut cfg = fake.config();
    cfg.canary = "nope".into();
    let e = HaproxyProvider::new(&cfg).current().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "provider `haproxy`: server `checkout/nope` not found"
    );
    assert!(!e.is_transient());
    let mut cfg = fake.config();
    cfg.backend = "other".into();
    let e = HaproxyProvider::new(&cfg).preflight().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "provider `haproxy`: backend `other` not found"
    );

    let p = HaproxyProvider::new(&fake.config());
    fake.set(|s| s.scenario = Scenario::UserLevel);
    let e = p.set_weight(Weight::FULL).await.unwrap_err();
    assert!(!e.is_transient());
    assert!(
        e.to_string()
            .contains("permission denied; give the stats socket `level admin`"),
        "{e}"
    );

    fake.set(|s| s.scenario = Scenario::Silent);
    let e = p.current().await.unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.kind(), "timeout");

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fake.config();
    cfg.socket = HaproxySocket::Unix(dir.path().join("missing.sock"));
    let e = HaproxyProvider::new(&cfg).current().await.unwrap_err();
    assert!(e.is_transient());
    assert!(
        e.to_string()
            .starts_with("provider `haproxy`: runtime API at "),
        "{e}"
    );
}
