//! Shared support of the end-to-end tests and the rollback benchmark: real HAProxy and
//! nginx started on free loopback ports in front of two in-process backends, a client that
//! counts which backend answered, and process guards that kill what they started.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use coalmine::demo::service::{Behaviour, Service};
use coalmine::policy::{HaproxyConfig, HaproxySocket, NginxConfig};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Finds `name` on PATH or in /usr/sbin and /sbin (where Debian puts haproxy and nginx).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The tool, or `None` after a loud skip message; under `CI=true` a missing tool fails.
pub fn require_tool(name: &str, package: &str) -> Option<PathBuf> {
    if let Some(p) = find_tool(name) {
        return Some(p);
    }
    let msg = format!(
        "`{name}` not found on PATH, /usr/sbin or /sbin: install Debian's `{package}` (scripts/test does)"
    );
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "{msg}; CI=true, so this end-to-end test fails instead of skipping"
    );
    eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
    None
}

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A loopback address that refuses connections and stays reserved while the socket lives:
/// bound, never listening, so no other test can take the port between choosing and using it
/// (what a port from [`free_port`] cannot promise).
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind a loopback port");
    let addr = socket.local_addr().expect("its address");
    (socket, addr)
}

/// A child process stopped (and reaped) when dropped.
pub struct Guard(pub Child);

impl Guard {
    /// Starts `cmd`, panicking with the command line when it cannot start.
    pub fn spawn(cmd: &mut Command) -> Guard {
        Guard(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
        )
    }

    /// Kills (SIGKILL) and reaps the process now.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Stops and reaps the process: SIGTERM first, so a server with workers (nginx's
    /// master) takes them down with it instead of leaving them behind, SIGKILL after 3 s.
    #[allow(
        clippy::disallowed_methods,
        reason = "a drop handler of a real process: no async runtime, wall-clock time"
    )]
    pub fn stop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .stderr(Stdio::null())
                .status();
            for _ in 0..60 {
                if !matches!(self.0.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        self.kill();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `addr` accepts TCP connections; panics with `what` after 10 s.
pub async fn wait_for_port(addr: SocketAddr, what: &str, child: &mut Child) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early with {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} does not listen on {addr}");
}

/// Two in-process backends answering `baseline ok` / `canary ok` (or `error` with 500).
pub struct Backends {
    pub baseline: Service,
    pub canary: Service,
}

impl Backends {
    pub async fn start(canary_error_rate: f64) -> Self {
        let behaviour = |track: &str, error_rate: f64, seed| Behaviour {
            track: track.to_string(),
            error_rate,
            median: Duration::from_micros(200),
            sigma: 0.1,
            slow_tail: 1.0,
            seed,
            body: coalmine::demo::service::BodyMode::Complete,
        };
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        Backends {
            baseline: Service::start(any, behaviour("baseline", 0.0, 1))
                .await
                .unwrap(),
            canary: Service::start(any, behaviour("canary", canary_error_rate, 2))
                .await
                .unwrap(),
        }
    }
}

/// A real HAProxy in front of the backends: backend `checkout`, servers `stable` and
/// `canary` (weights 256 and 0), admin sockets on a unix path and on a TCP port.
pub struct Haproxy {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub tcp_socket: SocketAddr,
    pub frontend: SocketAddr,
    pub child: Guard,
}

impl Haproxy {
    pub async fn start(bin: &Path, backends: &Backends) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tcp_socket: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = format!(
            "global\n  stats socket {sock} mode 600 level admin\n  stats socket ipv4@{tcp} level admin\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend web\n  bind {frontend}\n  default_backend checkout\n\
             backend checkout\n  balance roundrobin\n  server stable {b} weight 256\n  server canary {c} weight 0\n",
            sock = socket.display(),
            tcp = tcp_socket,
            b = backends.baseline.addr(),
            c = backends.canary.addr(),
        );
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let mut child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy");
        wait_for_port(frontend, "haproxy", &mut child).await;
        wait_for_port(tcp_socket, "haproxy's admin socket", &mut child).await;
        Haproxy {
            dir,
            socket,
            tcp_socket,
            frontend,
            child: Guard(child),
        }
    }

    /// The provider configuration for this instance's `checkout` backend through `socket`.
    pub fn config(socket: HaproxySocket, timeout: Duration) -> HaproxyConfig {
        HaproxyConfig {
            socket,
            backend: "checkout".into(),
            baseline: "stable".into(),
            canary: "canary".into(),
            timeout,
        }
    }

    /// [`Haproxy::config`] through the unix admin socket.
    pub fn unix_config(&self, timeout: Duration) -> HaproxyConfig {
        Self::config(HaproxySocket::Unix(self.socket.clone()), timeout)
    }
}

/// A real nginx (non-root-style foreground master) in front of the backends: upstream
/// `checkout` includes `upstream.conf`, which the provider owns.
pub struct Nginx {
    pub dir: tempfile::TempDir,
    pub include: PathBuf,
    pub frontend: SocketAddr,
    /// The argv prefix addressing this instance: `nginx -p DIR -c CONF -e LOG`.
    pub base: Vec<String>,
    pub child: Guard,
}

impl Nginx {
    pub async fn start(bin: &Path, backends: &Backends) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let include = d.join("upstream.conf");
        let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        std::fs::write(
            &include,
            format!(
                "server {} weight=1;\nserver {} down;\n",
                backends.baseline.addr(),
                backends.canary.addr()
            ),
        )
        .unwrap();
        let conf = d.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 upstream checkout {{\n    include {inc};\n    keepalive 16;\n  }}\n\
                 server {{\n    listen {frontend};\n    location / {{\n      proxy_pass http://checkout;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
                d = d.display(),
                inc = include.display(),
            ),
        )
        .unwrap();
        let base: Vec<String> = vec![
            bin.display().to_string(),
            "-p".into(),
            d.display().to_string(),
            "-c".into(),
            conf.display().to_string(),
            "-e".into(),
            d.join("error.log").display().to_string(),
        ];
        let mut child = Command::new(&base[0])
            .args(&base[1..])
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        wait_for_port(frontend, "nginx", &mut child).await;
        Nginx {
            dir,
            include,
            frontend,
            base,
            child: Guard(child),
        }
    }

    /// The master's worker processes (from /proc).
    pub fn workers(&self) -> Vec<u32> {
        let pid = self.child.0.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Waits until a reload is complete: none of the `old` workers is left and one new
    /// worker runs (`worker_processes 1`). Panics after 10 s.
    pub async fn wait_reloaded(&self, old: &[u32]) {
        for _ in 0..500 {
            let now = self.workers();
            if now.len() == 1 && !now.iter().any(|p| old.contains(p)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "nginx did not finish reloading: workers {:?}, before {old:?}",
            self.workers()
        );
    }

    pub fn command(&self, extra: &[&str]) -> Vec<String> {
        let mut v = self.base.clone();
        v.extend(extra.iter().map(ToString::to_string));
        v
    }

    /// The provider configuration for this instance (its include file, test and reload
    /// commands).
    pub fn config(
        &self,
        backends: &Backends,
        server_params: Option<String>,
        timeout: Duration,
    ) -> NginxConfig {
        NginxConfig {
            file: self.include.clone(),
            baseline: backends.baseline.addr().to_string(),
            canary: backends.canary.addr().to_string(),
            server_params,
            test_command: self.command(&["-t"]),
            reload_command: self.command(&["-s", "reload"]),
            timeout,
        }
    }
}

/// Sends `n` GET requests to `target` (8 at a time, keep-alive) and returns how many
/// the canary answered, and how many failed.
pub async fn canary_answers(target: SocketAddr, n: usize) -> (usize, usize) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let uri: hyper::Uri = format!("http://{target}/").parse().unwrap();
    let mut canary = 0;
    let mut failed = 0;
    let mut sent = 0;
    while sent < n {
        let batch = (n - sent).min(8);
        let answers = futures_util::future::join_all((0..batch).map(|_| {
            let (client, uri) = (client.clone(), uri.clone());
            async move {
                let resp = client.get(uri).await.ok()?;
                let body = resp.into_body().collect().await.ok()?.to_bytes();
                Some(body.starts_with(b"canary"))
            }
        }))
        .await;
        for a in answers {
            match a {
                Some(true) => canary += 1,
                Some(false) => {}
                None => failed += 1,
            }
        }
        sent += batch;
    }
    (canary, failed)
}

/// Asserts that `canary` of `n` requests is within 5 binomial standard deviations of the
/// weight (exactly 0 or n at 0 % and 100 %).
pub fn assert_split(pct: f64, canary: usize, n: usize, what: &str) {
    let p = pct / 100.0;
    let expected = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let ok = if p == 0.0 || p == 1.0 {
        canary as f64 == expected
    } else {
        (canary as f64 - expected).abs() <= 5.0 * sd
    };
    assert!(
        ok,
        "{what} at {pct}%: {canary} of {n} requests reached the canary, expected {expected:.0} ± {:.1}",
        5.0 * sd
    );
    eprintln!(
        "{what} at {pct}%: {canary} of {n} to the canary (expected {expected:.0} ± {:.1})",
        5.0 * sd
    );
}

/// A minimal feature-flag service (for the rollback benchmark): `PUT /flag` with
/// `{"rollout": N}` sets the percentage, `GET /flag` returns it.
pub struct FlagService {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FlagService {
    pub async fn start() -> Self {
        use std::sync::{Arc, Mutex};

        use http_body_util::Full;
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pct = Arc::new(Mutex::new(0.0_f64));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let pct = pct.clone();
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let pct = pct.clone();
                    async move {
                        let put = req.method() == hyper::Method::PUT;
                        let body = req.into_body().collect().await?.to_bytes();
                        if put {
                            let v: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            *pct.lock().unwrap() = v["rollout"].as_f64().unwrap_or(-1.0);
                        }
                        let text = format!("{{\"rollout\":{}}}", pct.lock().unwrap());
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(text))))
                    }
                });
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FlagService { addr, task }
    }
}

impl Drop for FlagService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The weights a rollout set, in order, from its decision records (the transitions that set
/// one: `weight-applied`, `post-promotion`, `rolled-back`, `promoted`).
pub fn applied(records: &[serde_json::Value]) -> Vec<f64> {
    records
        .iter()
        .filter(|r| {
            matches!(
                r["event"].as_str(),
                Some("weight-applied" | "post-promotion" | "rolled-back" | "promoted")
            )
        })
        .filter_map(|r| r["weight"].as_f64())
        .collect()
}
