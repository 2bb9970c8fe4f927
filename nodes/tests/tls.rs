//! `wss://` and credentials, against TLS servers made here: a tokio-rustls listener on a
//! loopback port with an rcgen certificate, either answering the WebSocket upgrade itself (to
//! look at the request's headers) or passing the decrypted bytes on to a real broker (to run a
//! client and a node over TLS). Every wait is bounded.
// A test crate: an unwrap that fails is a test that fails, helpers included.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodes::client::tls::{fingerprint_of, format_fingerprint};
use nodes::runtime::{self, Broker, BrokerSource, Config, Status};
use nodes::{Client, ConnectOptions, Context, Encoding, Error, HookResult, Node, Output, TlsTrust};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// A certificate and its key, as a server holds them.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// A self-signed certificate for these names (IP addresses become IP names).
    fn self_signed(names: &[&str]) -> Self {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Self {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    /// A leaf for these names signed by a CA made here; returns the CA's certificate too, as
    /// PEM.
    fn signed_by_a_ca(names: &[&str]) -> (Self, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let identity = Self {
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        };
        (identity, ca.pem())
    }

    /// The SHA-256 of the leaf certificate.
    fn fingerprint(&self) -> [u8; 32] {
        fingerprint_of(&self.chain[0])
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// What the TLS server does once the handshake is done.
#[derive(Clone)]
enum Behind {
    /// Answers the WebSocket upgrade itself: records the `Authorization` header, and refuses
    /// with 401 unless it is `Bearer <token>` (when a token is set); then holds the connection.
    Upgrade { token: Option<String> },
    /// Passes the bytes on to this (plain) broker.
    Broker(SocketAddr),
}

/// A TLS server on a loopback port.
struct TlsServer {
    addr: SocketAddr,
    /// `Authorization` headers of the upgrades seen (`None`: none sent).
    authorization: Arc<Mutex<Vec<Option<String>>>>,
    task: JoinHandle<()>,
}

impl TlsServer {
    async fn start(identity: &Identity, behind: Behind) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = identity.acceptor();
        let authorization = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&authorization);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, behind, seen) = (acceptor.clone(), behind.clone(), seen.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: nothing to do.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    match behind {
                        Behind::Broker(addr) => {
                            let mut plain = TcpStream::connect(addr).await.unwrap();
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                        Behind::Upgrade { token } => {
                            // tungstenite's callback type, whose error is an HTTP response.
                            #[allow(clippy::result_large_err)]
                            let check = |req: &Request, resp: Response| {
                                let got = req
                                    .headers()
                                    .get("authorization")
                                    .map(|v| v.to_str().unwrap().to_string());
                                seen.lock().unwrap().push(got.clone());
                                match &token {
                                    Some(t) if got != Some(format!("Bearer {t}")) => {
                                        let mut refusal = ErrorResponse::new(Some("who?".into()));
                                        *refusal.status_mut() =
                                            tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
                                        Err(refusal)
                                    }
                                    _ => Ok(resp),
                                }
                            };
                            if let Ok(mut ws) =
                                tokio_tungstenite::accept_hdr_async(tls, check).await
                            {
                                use futures_util::StreamExt;
                                while let Some(Ok(_)) = ws.next().await {}
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            authorization,
            task,
        }
    }

    fn url(&self, host: &str) -> String {
        format!("wss://{host}:{}/", self.addr.port())
    }

    fn authorization(&self) -> Vec<Option<String>> {
        self.authorization.lock().unwrap().clone()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A broker in this process, plain, on a loopback port.
async fn broker() -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let config = broker::Config {
        stats_interval: None,
        ..broker::Config::default()
    };
    tokio::spawn(broker::run(listener, config, shutdown.clone()));
    (addr, shutdown)
}

fn trusting(tls: TlsTrust) -> ConnectOptions {
    ConnectOptions {
        tls,
        ..ConnectOptions::with_encoding(Encoding::Json)
    }
}

async fn connect(url: &str, options: ConnectOptions) -> nodes::Result<(Client, nodes::Messages)> {
    timeout(WAIT, Client::connect(url, options))
        .await
        .expect("connect in time")
}

#[tokio::test]
async fn the_pinned_fingerprint_is_trusted_whatever_the_names() {
    let identity = Identity::self_signed(&["somewhere.else"]);
    let (broker_addr, stop) = broker().await;
    let server = TlsServer::start(&identity, Behind::Broker(broker_addr)).await;
    let (client, mut messages) = connect(
        &server.url("127.0.0.1"),
        trusting(TlsTrust::Fingerprint(identity.fingerprint())),
    )
    .await
    .unwrap();
    // The whole protocol runs over TLS.
    client.subscribe("t/#").await.unwrap();
    client.publish("t/1", 42).await.unwrap();
    let msg = timeout(WAIT, messages.recv()).await.unwrap().unwrap();
    assert_eq!((msg.topic.as_str(), msg.data.as_i64()), ("t/1", Some(42)));
    client.close().await;
    stop.cancel();
}

#[tokio::test]
async fn another_certificate_than_the_pinned_one_is_refused() {
    let identity = Identity::self_signed(&["127.0.0.1"]);
    let server = TlsServer::start(&identity, Behind::Upgrade { token: None }).await;
    let err = connect(
        &server.url("127.0.0.1"),
        trusting(TlsTrust::Fingerprint([7; 32])),
    )
    .await
    .unwrap_err();
    match &err {
        Error::FingerprintMismatch {
            expected, found, ..
        } => {
            assert_eq!(expected, &"07".repeat(32));
            assert_eq!(found, &format_fingerprint(&identity.fingerprint()));
        }
        other => panic!("expected a fingerprint mismatch, got {other}"),
    }
    assert!(err.to_string().contains("not the pinned"), "{err}");
    // Refused before any upgrade was sent.
    assert!(server.authorization().is_empty());
}

#[tokio::test]
async fn a_self_signed_certificate_given_as_its_ca_is_trusted() {
    let identity = Identity::self_signed(&["127.0.0.1", "localhost"]);
    let server = TlsServer::start(&identity, Behind::Upgrade { token: None }).await;
    let trust = TlsTrust::Ca(identity.chain.clone());
    for host in ["127.0.0.1", "localhost"] {
        let (client, _messages) = connect(&server.url(host), trusting(trust.clone()))
            .await
            .unwrap();
        client.close().await;
    }
}

#[tokio::test]
async fn a_ca_file_is_read_and_its_leaves_trusted() {
    let (identity, ca) = Identity::signed_by_a_ca(&["127.0.0.1"]);
    let (broker_addr, stop) = broker().await;
    let server = TlsServer::start(&identity, Behind::Broker(broker_addr)).await;
    let dir = std::env::temp_dir().join(format!("bb-tls-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("ca.pem");
    std::fs::write(&pem, ca).unwrap();
    let trust = TlsTrust::ca_file(&pem).unwrap();
    let (client, _messages) = connect(&server.url("127.0.0.1"), trusting(trust))
        .await
        .unwrap();
    client.ping().await.unwrap();
    client.close().await;
    std::fs::remove_dir_all(&dir).ok();
    stop.cancel();
}

#[tokio::test]
async fn a_certificate_from_another_ca_or_for_another_name_is_refused() {
    let identity = Identity::self_signed(&["127.0.0.1"]);
    let server = TlsServer::start(&identity, Behind::Upgrade { token: None }).await;
    let stranger = Identity::self_signed(&["127.0.0.1"]);
    let err = connect(
        &server.url("127.0.0.1"),
        trusting(TlsTrust::Ca(stranger.chain.clone())),
    )
    .await
    .unwrap_err();
    // rcgen names every self-signed certificate alike: the issuer is found, its key is not
    // the one that signed.
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    // The right CA, but the URL names a host the certificate is not for.
    let err = connect(
        &server.url("localhost"),
        trusting(TlsTrust::Ca(identity.chain.clone())),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(err.to_string().contains("not valid for name"), "{err}");
    // Nor do the public CAs know a self-signed certificate.
    let err = connect(&server.url("127.0.0.1"), trusting(TlsTrust::System))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
}

#[tokio::test]
async fn the_token_arrives_as_a_bearer_header() {
    let identity = Identity::self_signed(&["127.0.0.1"]);
    let server = TlsServer::start(
        &identity,
        Behind::Upgrade {
            token: Some("s3cret".into()),
        },
    )
    .await;
    let pinned = trusting(TlsTrust::Fingerprint(identity.fingerprint()));
    let (client, _messages) = connect(
        &server.url("127.0.0.1"),
        ConnectOptions {
            token: Some("s3cret".into()),
            ..pinned.clone()
        },
    )
    .await
    .unwrap();
    client.close().await;
    let err = connect(
        &server.url("127.0.0.1"),
        ConnectOptions {
            token: Some("wrong".into()),
            ..pinned.clone()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    let err = connect(&server.url("127.0.0.1"), pinned).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert_eq!(
        server.authorization(),
        vec![
            Some("Bearer s3cret".to_string()),
            Some("Bearer wrong".to_string()),
            None
        ]
    );
}

#[tokio::test]
async fn wss_to_a_plain_port_is_a_tls_error() {
    let (broker_addr, stop) = broker().await;
    let err = connect(
        &format!("wss://{broker_addr}/"),
        trusting(TlsTrust::Fingerprint([0; 32])),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    stop.cancel();
}

struct Idle;
impl Node for Idle {
    async fn setup(&mut self, _ctx: &mut Context) -> HookResult {
        Ok(())
    }
}

fn node_config(tls: TlsTrust) -> Config {
    let mut config = Config::new("idle", "test");
    config.output = Output::silent();
    config.connect.tls = tls;
    config
}

/// A node that discovered `wss://` with a fingerprint pins it when given no trust of its own,
/// and keeps its own trust when given one.
#[tokio::test]
async fn a_node_pins_the_discovered_fingerprint_unless_told_whom_to_trust() {
    let identity = Identity::self_signed(&["broker.lan"]);
    let (broker_addr, stop) = broker().await;
    let server = TlsServer::start(&identity, Behind::Broker(broker_addr)).await;
    let discovered = |fingerprint| Broker {
        url: server.url("127.0.0.1"),
        fingerprint: Some(fingerprint),
    };
    let cases = [
        // No trust of its own: the advertised pin.
        (TlsTrust::System, identity.fingerprint(), true),
        // Its own pin rules, whatever was advertised.
        (TlsTrust::Fingerprint(identity.fingerprint()), [9; 32], true),
        (
            TlsTrust::Fingerprint([9; 32]),
            identity.fingerprint(),
            false,
        ),
        // An advertised pin that does not match: never online.
        (TlsTrust::System, [9; 32], false),
    ];
    for (trust, advertised, online) in cases {
        let shutdown = CancellationToken::new();
        let (_tx, rx) = watch::channel(Some(discovered(advertised)));
        let mut handle = runtime::spawn(
            Idle,
            node_config(trust.clone()),
            BrokerSource::watch(rx),
            shutdown.clone(),
        );
        if online {
            timeout(WAIT, handle.ready()).await.unwrap().unwrap();
            assert!(matches!(*handle.status.borrow(), Status::Online { .. }));
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(*handle.status.borrow(), Status::Connecting, "{trust:?}");
        }
        shutdown.cancel();
        timeout(WAIT, handle.join()).await.unwrap().unwrap();
    }
    stop.cancel();
}
