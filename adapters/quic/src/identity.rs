//! Peer identity: Ed25519 keys, self-signed certificates made from them, and
//! rustls verifiers that pin keys instead of trusting a CA.
//!
//! Each side presents a self-signed certificate whose key is the peer's
//! Ed25519 key. The certificate itself is never trusted: the verifiers check
//! the TLS 1.3 handshake signature against the **expected** public key (the
//! client pins the server's key; the server learns the client's key from its
//! certificate and checks the client proved possession of it). So the peer id
//! is exactly the key that signed the handshake.

use std::sync::Arc;

use cairn::{AuthorId, Error, Keypair, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

pub(crate) use cairn_protocol::PeerId;

/// The ALPN protocol id Cairn speaks over QUIC.
pub const ALPN: &[u8] = b"cairn/1";

/// The TLS server name clients use (certificates are pinned, so it is not
/// checked).
pub(crate) const SERVER_NAME: &str = "cairn";

const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn tls_err(what: &'static str, e: impl std::fmt::Display) -> Error {
    Error::backend("quic", false, std::io::Error::other(format!("{what}: {e}")))
}

/// The peer id of a key pair.
pub fn peer_id(keypair: &Keypair) -> PeerId {
    keypair.author()
}

fn spki_of(key: &PeerId) -> Vec<u8> {
    let mut v = SPKI_ED25519_PREFIX.to_vec();
    v.extend_from_slice(key.as_bytes());
    v
}

/// The Ed25519 key of a certificate made by [`certificate`] (or any
/// certificate holding exactly one Ed25519 SubjectPublicKeyInfo).
pub fn key_of_certificate(cert: &[u8]) -> Option<PeerId> {
    let mut found = None;
    for (i, w) in cert.windows(SPKI_ED25519_PREFIX.len()).enumerate() {
        if w == SPKI_ED25519_PREFIX {
            if found.is_some() {
                return None; // ambiguous
            }
            let start = i + SPKI_ED25519_PREFIX.len();
            let bytes: [u8; 32] = cert.get(start..start + 32)?.try_into().ok()?;
            found = Some(AuthorId::from_bytes(bytes));
        }
    }
    found
}

/// A self-signed certificate for `keypair` and its private key, for rustls.
pub fn certificate(keypair: &Keypair) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let mut pkcs8 = PKCS8_ED25519_PREFIX.to_vec();
    pkcs8.extend_from_slice(&keypair.seed());
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    let rc_key = rcgen::KeyPair::try_from(&key_der).map_err(|e| tls_err("key pair", e))?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .map_err(|e| tls_err("certificate parameters", e))?;
    let cert = params
        .self_signed(&rc_key)
        .map_err(|e| tls_err("self-signed certificate", e))?;
    Ok((cert.der().clone(), key_der))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn verify13(
    message: &[u8],
    key: &PeerId,
    dss: &DigitallySignedStruct,
) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
    let spki = spki_of(key);
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(spki.as_slice()),
        dss,
        &algorithms(),
    )
}

fn bad_cert(reason: &str) -> rustls::Error {
    rustls::Error::General(reason.to_owned())
}

/// Client side: accept only a server whose key is `expected`.
#[derive(Debug)]
struct PinnedServer {
    expected: PeerId,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match key_of_certificate(end_entity) {
            Some(k) if k == self.expected => Ok(ServerCertVerified::assertion()),
            Some(k) => {
                tracing::warn!(expected = %self.expected, found = %k, "server key does not match the pinned key");
                Err(bad_cert("server key does not match the pinned peer id"))
            }
            None => Err(bad_cert("server certificate has no Ed25519 key")),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(bad_cert("TLS 1.2 is not used"))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify13(message, &self.expected, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server side: require a client certificate with one Ed25519 key and a
/// handshake signed by it. Authorisation is per store, after the handshake.
#[derive(Debug)]
struct AnyPeer;

impl ClientCertVerifier for AnyPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        match key_of_certificate(end_entity) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(bad_cert("client certificate has no single Ed25519 key")),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(bad_cert("TLS 1.2 is not used"))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let key = key_of_certificate(cert)
            .ok_or_else(|| bad_cert("client certificate has no single Ed25519 key"))?;
        verify13(message, &key, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The peer id of an established connection (the key that signed the
/// handshake).
pub(crate) fn remote_peer(conn: &quinn::Connection) -> Option<PeerId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    key_of_certificate(certs.first()?)
}

/// Transport settings. Only clients send keep-alives: a server that sent
/// its own would keep every silent peer's connection open forever.
pub(crate) fn transport(max_concurrent: u32, keep_alive: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(max_concurrent.max(1)))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .keep_alive_interval(keep_alive.then(|| std::time::Duration::from_secs(5)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(std::time::Duration::from_secs(30)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// A client's transport settings with an idle timeout of `idle` (at least
/// 1 s); keep-alives every third of it, at most every 5 s.
pub(crate) fn client_transport(idle: std::time::Duration) -> Arc<quinn::TransportConfig> {
    let idle = idle.max(std::time::Duration::from_secs(1));
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .keep_alive_interval(Some((idle / 3).min(std::time::Duration::from_secs(5))));
    if let Ok(i) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(i));
    }
    Arc::new(t)
}

/// The quinn server configuration for `keypair` (any client key is accepted
/// at the TLS level; authorise after the handshake), allowing
/// `max_concurrent` bidirectional streams per connection.
pub fn server_config(keypair: &Keypair, max_concurrent: u32) -> Result<quinn::ServerConfig> {
    let (cert, key) = certificate(keypair)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS versions", e))?
        .with_client_cert_verifier(Arc::new(AnyPeer))
        .with_single_cert(vec![cert], key)
        .map_err(|e| tls_err("server certificate", e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| tls_err("QUIC TLS config", e))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport(max_concurrent, false));
    Ok(cfg)
}

/// The quinn client configuration for `keypair`, pinning `server`.
pub fn client_config(keypair: &Keypair, server: PeerId) -> Result<quinn::ClientConfig> {
    let (cert, key) = certificate(keypair)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer { expected: server }))
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| tls_err("client certificate", e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| tls_err("QUIC TLS config", e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport(1024, true));
    Ok(cfg)
}
