//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The built `coalmine` binary.
pub(crate) fn coalmine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_coalmine"))
}

/// Runs the binary with `args` and returns its output.
pub(crate) fn run(args: &[&str]) -> Output {
    coalmine()
        .args(args)
        .output()
        .expect("the coalmine binary runs")
}

/// The repository root.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// stdout and stderr as text.
pub(crate) fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A backend that counts what reaches it: readiness probes (by their `User-Agent`) apart
/// from every other request. Answers 200 while `healthy`, 503 otherwise.
pub(crate) struct CountingBackend {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) probes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl CountingBackend {
    pub(crate) fn start(healthy: bool) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let probes = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let ok = Arc::new(AtomicBool::new(healthy));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (p, r, h) = (probes.clone(), requests.clone(), ok.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = &mut stopped => return,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let (p, r, h) = (p.clone(), r.clone(), h.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let probe = req
                                    .headers()
                                    .get(hyper::header::USER_AGENT)
                                    .is_some_and(|v| v == "coalmine-readiness");
                                if probe {
                                    p.fetch_add(1, Ordering::SeqCst);
                                } else {
                                    r.fetch_add(1, Ordering::SeqCst);
                                }
                                let mut resp = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from_static(b"counted\n"),
                                ));
                                if !h.load(Ordering::SeqCst) {
                                    *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                }
                                async move { Ok::<_, std::convert::Infallible>(resp) }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        CountingBackend {
            addr,
            probes,
            requests,
            healthy: ok,
            stop: Some(stop),
        }
    }
}

impl Drop for CountingBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The parseable lines of a decision log (none when it does not exist yet).
pub(crate) fn records(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
