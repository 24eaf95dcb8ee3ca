//! A minimal client of HAProxy's runtime API (the "stats socket"): one command per
//! connection, in non-interactive mode, so HAProxy answers and closes.

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
        RuntimeApi { socket, timeout }
    }

    /// The socket, for messages.
    #[must_use]
    pub fn socket(&self) -> &HaproxySocket {
        &self.socket
    }

    /// Sends one command (without the newline) on a fresh connection and returns the
    /// whole answer.
    pub async fn command(&self, command: &str) -> Result<String, RuntimeError> {
        let io = |source| RuntimeError::Io {
            socket: self.socket.to_string(),
            source,
        };
        let run = async {
            match &self.socket {
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
        tokio::time::timeout(self.timeout, run)
            .await
            .unwrap_or_else(|_| {
                Err(RuntimeError::Timeout {
                    socket: self.socket.to_string(),
                    after: self.timeout,
                })
            })
    }
}
