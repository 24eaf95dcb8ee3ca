//! Shutdown answers what was sent before it: a request on a kept-alive connection that
//! arrives just after the stop, and connections still in the listen queue.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::{ConnBudget, ServeLimits, ServerStats, serve};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// A server answering "ok" to everything, stopped by the returned sender.
async fn start() -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        ServeLimits::default(),
        ConnBudget::new(64),
        Arc::new(ServerStats::default()),
        async {
            let _ = rx.await;
        },
        |_req: Request<hyper::body::Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    ));
    (addr, tx, task)
}

/// Reads one response head and its 2-byte body; `None` when the connection ended first.
async fn response(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"ok") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    (read == Ok(true)).then(|| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn a_request_on_a_kept_alive_connection_just_after_the_stop_is_answered() {
    let (addr, stop, task) = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(REQUEST).await.unwrap();
    let first = response(&mut s).await.expect("the first answer");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The client reuses its idle connection just as the server stops.
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(REQUEST).await.unwrap();
    let second = response(&mut s)
        .await
        .expect("the request sent 50 ms after the stop is answered, not reset");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "and the connection closes after it: {second}"
    );
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the server stops")
        .unwrap();
}

/// On this single-threaded runtime the server runs only while the test awaits, so the ten
/// connections are still in the listen queue, their requests sent, when the stop comes.
#[tokio::test(flavor = "current_thread")]
async fn connections_in_the_listen_queue_at_the_stop_are_answered() {
    let (addr, stop, task) = start().await;
    // Let the server reach its accept.
    tokio::task::yield_now().await;
    let mut queued = Vec::new();
    for _ in 0..10 {
        // A blocking connect: the server does not run meanwhile.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut s, REQUEST).unwrap();
        s.set_nonblocking(true).unwrap();
        queued.push(s);
    }
    stop.send(()).unwrap();
    let mut answered = 0;
    for s in queued {
        let mut s = TcpStream::from_std(s).unwrap();
        if response(&mut s)
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            answered += 1;
        }
    }
    assert_eq!(
        answered, 10,
        "every queued connection's request is answered"
    );
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the server stops")
        .unwrap();
}
