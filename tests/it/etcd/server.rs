//! Real etcd for the tests: one member or a cluster of several, on free loopback ports,
//! each with its own data directory in a temporary directory, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coalmine::controller::store::etcd::{EtcdClient, EtcdConfig};

use crate::common::{Guard, free_port, require_tool};

/// One member.
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) client: u16,
    peer: u16,
    guard: Option<Guard>,
}

/// An etcd cluster on loopback.
pub(crate) struct Etcd {
    pub(crate) members: Vec<Member>,
    pub(crate) dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    /// With TLS: the CA, and the client's certificate and key (members require them).
    pub(crate) tls: Option<Tls>,
}

/// A private CA's files for a TLS cluster.
pub(crate) struct Tls {
    pub(crate) ca: PathBuf,
    server: (PathBuf, PathBuf),
    pub(crate) client: (PathBuf, PathBuf),
}

impl Tls {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
    fn write(dir: &Path) -> Tls {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |name: &str, sans: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(sans)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            let paths = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            std::fs::write(&paths.0, cert.pem()).unwrap();
            std::fs::write(&paths.1, key.serialize_pem()).unwrap();
            paths
        };
        let server = leaf("server", vec!["127.0.0.1".to_string()]);
        let client = leaf("client", vec!["coalmine".to_string()]);
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        Tls {
            ca: ca_path,
            server,
            client,
        }
    }
}

impl Etcd {
    /// Starts `n` members and waits until the cluster answers; `None` (after a loud
    /// message) when etcd is not installed and CI is not set.
    pub(crate) async fn start(n: usize) -> Option<Etcd> {
        Self::start_with(n, false).await
    }

    /// One member serving clients over TLS only, requiring a client certificate.
    pub(crate) async fn start_tls() -> Option<Etcd> {
        Self::start_with(1, true).await
    }

    async fn start_with(n: usize, tls: bool) -> Option<Etcd> {
        let bin = require_tool("etcd", "etcd-server")?;
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.then(|| Tls::write(dir.path()));
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                guard: None,
            })
            .collect();
        let mut etcd = Etcd {
            members,
            dir,
            bin,
            tls,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        etcd.wait_ready().await;
        Some(etcd)
    }

    fn spawn(&mut self, i: usize) {
        let cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).unwrap();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "coalmine-test"])
            // Quick elections on loopback (the minimum lease TTL is 1.5 election timeouts).
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(self.tls.iter().flat_map(|t| {
                [
                    "--cert-file".into(),
                    t.server.0.clone().into_os_string(),
                    "--key-file".into(),
                    t.server.1.clone().into_os_string(),
                    "--trusted-ca-file".into(),
                    t.ca.clone().into_os_string(),
                    "--client-cert-auth".into(),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.members[i].guard = Some(Guard::spawn(&mut cmd));
    }

    /// `etcd://` with every member's client address.
    pub(crate) fn url(&self) -> String {
        let eps: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}", eps.join(","))
    }

    /// The configuration of a client of every member (with the TLS files if any).
    pub(crate) fn config(&self) -> EtcdConfig {
        let mut cfg = EtcdConfig::from_url(&self.url()).unwrap();
        cfg.timeout = Duration::from_secs(2);
        if let Some(t) = &self.tls {
            cfg.ca_file = Some(t.ca.clone());
            cfg.cert_file = Some(t.client.0.clone());
            cfg.key_file = Some(t.client.1.clone());
        }
        cfg
    }

    /// A client of every member.
    pub(crate) fn client(&self) -> Arc<EtcdClient> {
        Arc::new(EtcdClient::new(&self.config()).unwrap())
    }

    /// Kills member `i` with SIGKILL.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut g) = self.members[i].guard.take() {
            g.kill();
        }
    }

    /// Stops every member (SIGKILL): etcd is gone until [`Self::restart`].
    pub(crate) fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts every stopped member again on its data directory.
    pub(crate) async fn restart(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].guard.is_none() {
                self.spawn(i);
            }
        }
        self.wait_ready().await;
    }

    /// Waits until a write succeeds through some member (a leader is elected).
    async fn wait_ready(&mut self) {
        let c = self.client();
        for _ in 0..300 {
            let put = c
                .txn(
                    &[],
                    &[coalmine::controller::store::etcd::Op::Put(
                        b"/ready".to_vec(),
                        b"1".to_vec(),
                        0,
                    )],
                    &[],
                )
                .await;
            if put.is_ok() {
                return;
            }
            for m in &mut self.members {
                if let Some(g) = &mut m.guard
                    && let Ok(Some(status)) = g.0.try_wait()
                {
                    let log =
                        std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                            .unwrap_or_default();
                    panic!("etcd member {} exited with {status}:\n{log}", m.name);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd at {} did not become ready within 15 s", self.url());
    }
}
