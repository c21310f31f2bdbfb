//! TLS 1.3 on the replication links (`docs/security.md`).
//!
//! - [`TlsSettings`]: what an operator configures, paths only (never key bytes).
//! - [`TlsContext`]: the loaded credentials of one process, which make the rustls
//!   configurations of its links.
//! - [`handshake`]: runs rustls' handshake over a non-blocking socket, then hands the
//!   traffic keys to [`record`], the allocation-free record layer the data path uses.
//! - [`pki`]: makes a deployment's CA and role certificates (tests, `baton tls-certs`).
//!
//! Two ways to authenticate, both mutual:
//! - **Certificates**: one CA per deployment; each process presents a certificate whose DNS
//!   name is `<role>.<site>` (`relay.osaka`), and checks that its peer's chains to the CA and
//!   names the role the link expects (a primary's link expects a relay, a relay's listener a
//!   primary, ...).
//! - **Pre-shared key**: every process of the deployment holds the same secret file. Each
//!   derives from it, by HKDF, the same Ed25519 key and a certificate of it, and accepts a
//!   peer only if the peer proves it holds that key. Anyone with the file passes as any role.

pub mod blocking;
pub mod handshake;
pub mod pki;
pub mod record;
pub mod stream;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use handshake::Handshake;
pub use record::RecordLayer;

/// The role a certificate names (its DNS name's first label) and a link expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Writes the volume and replicates it.
    Primary,
    /// Holds ops in its journal and forwards them.
    Relay,
    /// Applies ops at the far site.
    Standby,
}

impl Role {
    /// The DNS label naming the role in a certificate.
    pub fn label(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Relay => "relay",
            Role::Standby => "standby",
        }
    }
}

/// How a process authenticates its replication links. Paths only: the secret stays in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSettings {
    /// The deployment's CA, this process's certificate chain and private key (PEM files).
    Certs {
        /// CA certificate(s) that sign every role's certificate.
        ca: PathBuf,
        /// This process's certificate (chain), naming `<role>.<site>`.
        cert: PathBuf,
        /// Its private key (PKCS#8, PKCS#1 or SEC1 PEM).
        key: PathBuf,
    },
    /// A secret file shared by every process of the deployment (at least 32 bytes).
    Psk {
        /// The file holding the secret.
        key_file: PathBuf,
    },
}

impl TlsSettings {
    /// From what an operator gives (flags or RPC parameters): the CA, certificate and key
    /// together, or the key file alone. `Ok(None)` when nothing is given; `Err(())` for any
    /// other mix (each caller names its own parameters in the message).
    #[allow(clippy::result_unit_err)]
    pub fn from_parts(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        psk_file: Option<PathBuf>,
    ) -> Result<Option<TlsSettings>, ()> {
        match (ca, cert, key, psk_file) {
            (Some(ca), Some(cert), Some(key), None) => Ok(Some(TlsSettings::Certs { ca, cert, key })),
            (None, None, None, Some(key_file)) => Ok(Some(TlsSettings::Psk { key_file })),
            (None, None, None, None) => Ok(None),
            _ => Err(()),
        }
    }
}

/// Why TLS could not be set up or a TLS link failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A credential file could not be read or parsed.
    #[error("TLS {what} {path}: {msg}")]
    Load {
        /// Which credential.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
    /// The credentials do not fit together or this process's role.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The handshake failed here (the peer's certificate or key was refused, or the peer
    /// speaks no TLS 1.3).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The peer ended the session with an alert (after a handshake it accepted on its side
    /// but then refused our certificate, or a shutdown).
    #[error("peer sent TLS alert {name} ({code}){hint}")]
    PeerAlert {
        /// Alert name.
        name: &'static str,
        /// Alert code.
        code: u8,
        /// What it usually means.
        hint: &'static str,
    },
    /// A record failed authentication: corrupted or forged bytes, or not TLS at all.
    #[error("TLS record failed authentication (corrupted or forged data)")]
    Open,
    /// Sealing failed (cannot happen with valid keys; reported rather than ignored).
    #[error("TLS record sealing failed")]
    Seal,
    /// A record that is not what an established TLS 1.3 link carries.
    #[error("bad TLS record: {0}")]
    BadRecord(&'static str),
    /// The peer sent a post-handshake message (key update, ticket) that baton never sends.
    #[error("unexpected TLS handshake message after the handshake")]
    PostHandshake,
    /// A key protected as many bytes as it may: the link reconnects for new keys.
    #[error("TLS key usage limit reached; reconnecting renews the keys")]
    KeyExhausted,
    /// The negotiated cipher suite has no record layer here.
    #[error("TLS cipher suite not supported by the record layer")]
    Suite,
}

/// The crypto of every link: `ring`'s, built with the workspace already. rustls deprecates
/// its `ring` provider only for lacking post-quantum key exchange; its TLS 1.3 suites and
/// X25519/P-256 key exchange are what the links use.
/// Built once per process: every configuration and every signature check shares it.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A rustls error as an operator should read it: our own refusal reasons in words.
pub(crate) fn describe(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    match e {
        Error::InvalidCertificate(CertificateError::Other(o)) => format!("peer's certificate refused: {}", o.0),
        Error::AlertReceived(a) => format!("the peer refused us (alert {a:?}): check this process's credentials"),
        e => e.to_string(),
    }
}

/// The loaded credentials of one process (cheap to clone).
#[derive(Clone)]
pub struct TlsContext {
    inner: Arc<Inner>,
}

struct Inner {
    settings: TlsSettings,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Certificates: the CA store; PSK: `None` (peers must present our own public key).
    roots: Option<Arc<RootCertStore>>,
    /// The name this process presents (`relay.osaka`, or `psk` for a pre-shared key).
    name: String,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsContext({:?} as {})", self.inner.settings, self.inner.name)
    }
}

fn load_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(String) -> TlsError + 'a {
    move |msg| TlsError::Load {
        what,
        path: path.to_path_buf(),
        msg,
    }
}

impl TlsContext {
    /// Loads `settings` for a process of role `own`. With certificates, this process's
    /// certificate must chain to the CA and name `own`: a misconfigured process fails at
    /// start, not at its first connection.
    pub fn load(settings: &TlsSettings, own: Role) -> Result<Self, TlsError> {
        let inner = match settings {
            TlsSettings::Certs { ca, cert, key } => {
                let roots = pki::load_roots(ca)?;
                let chain = pki::load_chain(cert)?;
                let key = pki::load_key(key)?;
                let name = verify::check_own(&chain, &roots, own).map_err(TlsError::Config)?;
                Inner {
                    settings: settings.clone(),
                    chain,
                    key,
                    roots: Some(Arc::new(roots)),
                    name,
                }
            }
            TlsSettings::Psk { key_file } => {
                let secret = std::fs::read(key_file).map_err(|e| load_err("key file", key_file)(e.to_string()))?;
                if secret.len() < 32 {
                    return Err(load_err("key file", key_file)(format!(
                        "holds {} bytes; a pre-shared key needs at least 32",
                        secret.len()
                    )));
                }
                let (chain, key) = pki::psk_identity(&secret)?;
                Inner {
                    settings: settings.clone(),
                    chain,
                    key,
                    roots: None,
                    name: "psk".into(),
                }
            }
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// What was configured (for `save_config` and status: paths, no secrets).
    pub fn settings(&self) -> &TlsSettings {
        &self.inner.settings
    }

    /// The name this process presents.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn verifier(&self, expect: Role) -> Arc<verify::PeerVerifier> {
        Arc::new(verify::PeerVerifier::new(
            self.inner.roots.clone(),
            self.inner.chain[0].clone(),
            expect,
        ))
    }

    /// The client side of a link to a peer of role `expect`.
    pub fn client_config(&self, expect: Role) -> Result<Arc<ClientConfig>, TlsError> {
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier(expect))
            .with_client_auth_cert(self.inner.chain.clone(), self.inner.key.clone_key())
            .map_err(|e| TlsError::Config(format!("own certificate and key: {e}")))?;
        c.enable_secret_extraction = true;
        c.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(c))
    }

    /// The server side of a listener that accepts peers of role `expect`.
    pub fn server_config(&self, expect: Role) -> Result<Arc<ServerConfig>, TlsError> {
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(self.verifier(expect))
            .with_single_cert(self.inner.chain.clone(), self.inner.key.clone_key())
            .map_err(|e| TlsError::Config(format!("own certificate and key: {e}")))?;
        c.enable_secret_extraction = true;
        // No tickets: nothing may follow the handshake but the record layer's own records.
        c.send_tls13_tickets = 0;
        Ok(Arc::new(c))
    }
}

/// The process's TLS identity: a process is one role at one site, so every replication
/// link it opens or accepts uses the same credentials. Set once at start-up.
static PROCESS: std::sync::OnceLock<TlsContext> = std::sync::OnceLock::new();

/// Makes `ctx` the identity of every replication link this process opens or accepts from
/// now on. Once per process.
pub fn install(ctx: TlsContext) -> Result<(), TlsError> {
    PROCESS
        .set(ctx)
        .map_err(|_| TlsError::Config("TLS credentials are already installed in this process".into()))
}

/// The process's TLS identity, if links are encrypted.
pub fn process() -> Option<&'static TlsContext> {
    PROCESS.get()
}

/// The role this process plays, for credentials given later by JSON-RPC.
static PROCESS_ROLE: std::sync::OnceLock<Role> = std::sync::OnceLock::new();

/// Records this process's role (at start-up, before any config loads).
pub fn set_process_role(role: Role) {
    let _ = PROCESS_ROLE.set(role);
}

/// This process's role, if it has one.
pub fn process_role() -> Option<Role> {
    PROCESS_ROLE.get().copied()
}
