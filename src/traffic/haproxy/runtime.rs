//! A minimal client of HAProxy's runtime API (the "stats socket"): one command per
//! connection, in non-interactive mode, so HAProxy answers and closes.
//!
//! Commands of one client run one at a time, in the order they were issued, and a command
//! once sent runs to its answer even when its caller is dropped: otherwise a `set weight`
//! cancelled after it was written could reach HAProxy after a later one and undo it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::policy::HaproxySocket;

/// Why a runtime-API command got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Connecting, writing or reading failed.
    #[error("runtime API at {socket} unreachable")]
    Io {
        /// The socket.
        socket: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No complete answer within the limit.
    #[error("runtime API at {socket}: no answer within {}", humantime::format_duration(*.after))]
    Timeout {
        /// The socket.
        socket: String,
        /// The limit.
        after: Duration,
    },
}

/// The runtime API at one socket.
#[derive(Clone, Debug)]
pub struct RuntimeApi {
    socket: HaproxySocket,
    timeout: Duration,
    /// Held by the command in flight, from before it connects until its answer.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Answers are small (a few lines per server); anything beyond this is cut.
const MAX_ANSWER: u64 = 16 << 20;

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    command: &str,
) -> std::io::Result<String> {
    s.write_all(command.as_bytes()).await?;
    s.write_all(b"\n").await?;
    s.flush().await?;
    let mut out = Vec::new();
    (&mut s).take(MAX_ANSWER).read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

impl RuntimeApi {
    /// A client for `socket`; every command is limited to `timeout`.
    #[must_use]
    pub fn new(socket: HaproxySocket, timeout: Duration) -> Self {
        RuntimeApi {
            socket,
            timeout,
            turn: Arc::default(),
        }
    }

    /// The socket, for messages.
    #[must_use]
    pub fn socket(&self) -> &HaproxySocket {
        &self.socket
    }

    /// Sends one command (without the newline) on a fresh connection and returns the
    /// whole answer. Waits for the commands issued before it; once its turn has come, it
    /// runs to the end in a task of its own, whether or not the caller still waits.
    pub async fn command(&self, command: &str) -> Result<String, RuntimeError> {
        let turn = self.turn.clone().lock_owned().await;
        let (socket, timeout, command) = (self.socket.clone(), self.timeout, command.to_string());
        let task = tokio::spawn(async move {
            let answer = send(&socket, timeout, &command).await;
            drop(turn);
            answer
        });
        task.await.unwrap_or_else(|e| {
            Err(RuntimeError::Io {
                socket: self.socket.to_string(),
                source: std::io::Error::other(e),
            })
        })
    }
}

/// One command on a fresh connection to `socket`, within `timeout`.
async fn send(
    socket: &HaproxySocket,
    timeout: Duration,
    command: &str,
) -> Result<String, RuntimeError> {
    let io = |source| RuntimeError::Io {
        socket: socket.to_string(),
        source,
    };
    let run = async {
        match socket {
            #[cfg(unix)]
            HaproxySocket::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path).await.map_err(io)?;
                exchange(s, command).await.map_err(io)
            }
            #[cfg(not(unix))]
            HaproxySocket::Unix(_) => Err(io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "unix sockets need a unix system",
            ))),
            HaproxySocket::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(io)?;
                exchange(s, command).await.map_err(io)
            }
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| {
            Err(RuntimeError::Timeout {
                socket: socket.to_string(),
                after: timeout,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::AsyncBufReadExt;

    /// A runtime API that takes 200 ms to act on the first command it reads and logs
    /// each command when it acts on it.
    async fn slow_first() -> (HaproxySocket, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let log = seen.clone();
                tokio::spawn(async move {
                    let mut s = tokio::io::BufReader::new(s);
                    let mut line = String::new();
                    let _ = s.read_line(&mut line).await;
                    if n == 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    log.lock().unwrap().push(line.trim().to_string());
                    let _ = s.get_mut().write_all(b"\n").await;
                });
            }
        });
        (HaproxySocket::Tcp(addr.to_string()), log)
    }

    #[tokio::test]
    async fn a_cancelled_command_is_acted_on_before_the_next() {
        let (socket, log) = slow_first().await;
        let api = RuntimeApi::new(socket, Duration::from_secs(5));
        let cancelled =
            tokio::time::timeout(Duration::from_millis(20), api.command("set weight b/c 75")).await;
        assert!(
            cancelled.is_err(),
            "the first command was meant to be cut off"
        );
        api.command("set weight b/c 10").await.unwrap();
        // Before: the second command overtook the cancelled one, which then undid it.
        assert_eq!(
            *log.lock().unwrap(),
            ["set weight b/c 75", "set weight b/c 10"]
        );
    }
}
