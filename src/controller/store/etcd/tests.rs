//! The etcd client's pure parts: URLs, key ranges, and answers that never panic. The
//! store against a real etcd is tested in tests/it/etcd.

use proptest::prelude::*;

use super::client::{Kv, parse};
use super::*;

#[test]
fn etcd_urls_name_every_endpoint() {
    let c = EtcdConfig::from_url("etcd://127.0.0.1:2379,[::1]:2380,etcd-2:2381").unwrap();
    assert_eq!(c.endpoints, ["127.0.0.1:2379", "[::1]:2380", "etcd-2:2381"]);
    for bad in [
        "http://127.0.0.1:2379",
        "etcd://",
        "etcd://host",
        "etcd://host:0",
        "etcd://host:99999",
        "etcd://user:pw@host:1",
        "etcd://a:1,,b:2",
        "etcd://:2379",
    ] {
        let e = EtcdConfig::from_url(bad).unwrap_err().to_string();
        assert!(e.contains(bad), "{bad}: {e}");
    }
}

#[test]
fn a_prefix_range_ends_after_every_key_with_the_prefix() {
    assert_eq!(prefix_end(b"/coalmine/rollouts/"), b"/coalmine/rollouts0");
    assert_eq!(prefix_end(b"a\xff\xff"), b"b");
    assert_eq!(prefix_end(b"\xff"), b"\0");
}

#[tokio::test]
async fn gateway_answers_parse_with_defaults_omitted() {
    // As etcd 3.4's gateway writes them: 64-bit numbers as strings, defaults left out.
    let range = br#"{"header":{"revision":"7"},"kvs":[{"key":"L2MvbGVhZGVy","create_revision":"2","mod_revision":"5","version":"1","value":"eA==","lease":"4111120375266130439"}],"count":"1"}"#;
    let (addr, task) = fake_etcd(200, range.to_vec()).await;
    let c = EtcdClient::new(&EtcdConfig::from_url(&format!("etcd://{addr}")).unwrap()).unwrap();
    let kv = c.get(b"/c/leader").await.unwrap().unwrap();
    assert_eq!(
        kv,
        Kv {
            key: b"/c/leader".to_vec(),
            value: b"x".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            lease: 4_111_120_375_266_130_439,
        }
    );
    // A transaction that failed says nothing of `succeeded`.
    let t = c.txn(&[], &[], &[]).await.unwrap();
    assert!(!t.succeeded);
    task.abort();
    let missing: Result<serde_json::Value, _> = parse(b"");
    assert!(missing.is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes as any answer the client reads never panic.
    #[test]
    fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        client::parse_any(&bytes);
    }

    /// Answers shaped like etcd's with arbitrary field values never panic either.
    #[test]
    fn shaped_answers_never_panic(
        rev in "[-0-9a-z\"]{0,24}",
        key in "[A-Za-z0-9+/=!]{0,16}",
        ttl in prop_oneof![Just("\"5\"".to_string()), Just("-1".to_string()), Just("1e400".to_string()), "[0-9\"]{0,22}"],
    ) {
        let range = format!(r#"{{"header":{{"revision":{rev}}},"kvs":[{{"key":"{key}","value":"{key}","create_revision":{rev},"mod_revision":{ttl},"lease":{ttl}}}],"more":true}}"#);
        client::parse_any(range.as_bytes());
        let lease = format!(r#"{{"result":{{"ID":{rev},"TTL":{ttl}}},"error":{{"code":{ttl}}}}}"#);
        client::parse_any(lease.as_bytes());
        let txn = format!(r#"{{"succeeded":{ttl},"responses":[{{"response_range":{{"kvs":[{{"key":{rev}}}]}}}}]}}"#);
        client::parse_any(txn.as_bytes());
    }
}

/// A fake etcd on loopback answering every request with `status` and `body`.
async fn fake_etcd(status: u16, body: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 8192];
            let _ = s.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
            let _ = s.shutdown().await;
        }
    });
    (addr, task)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every request of the client, answered with arbitrary bytes (and an arbitrary
    /// status), fails or succeeds but never panics.
    #[test]
    fn the_client_survives_any_answer(
        status in prop_oneof![Just(200u16), Just(400), Just(401), Just(503), 200u16..600],
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            Just(br#"{"result":{"TTL":"-9223372036854775808","ID":"-1"}}"#.to_vec()),
            Just(br#"{"kvs":[{"key":"!!","mod_revision":"x"}],"more":true}"#.to_vec()),
            Just(br#"{"kvs":[{"key":"YQ==","value":"YQ==","mod_revision":"-5"}],"more":true}"#.to_vec()),
            Just(br#"{"succeeded":true,"header":{"revision":"-3"}}"#.to_vec()),
            Just(br#"{"code":16,"message":"invalid auth token"}"#.to_vec()),
        ],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (addr, task) = fake_etcd(status, body).await;
            let mut cfg = EtcdConfig::from_url(&format!("etcd://{addr}")).unwrap();
            cfg.timeout = Duration::from_secs(2);
            cfg.user = Some("u".to_string());
            cfg.password = Some("secret-password".to_string());
            let c = EtcdClient::new(&cfg).unwrap();
            let _ = c.get(b"k").await;
            // A prefix read of an endless "more" stops: each page must advance.
            let _ = tokio::time::timeout(Duration::from_secs(5), c.get_prefix(b"a")).await
                .expect("a paged read ends");
            let _ = c.txn(&[Compare::CreateRevision(b"k".to_vec(), 0)], &[Op::Get(b"k".to_vec())], &[]).await;
            let _ = c.lease_grant(Duration::from_secs(5)).await;
            let _ = c.lease_keepalive(1, Duration::from_secs(1)).await;
            let _ = c.lease_revoke(1).await;
            task.abort();
        });
    }
}
