//! Credentials on disk: loading PEM files, the identity derived from a pre-shared key, and
//! making a deployment's CA and role certificates (`baton tls-certs`, tests).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

use super::{load_err, Role, TlsError};

/// Reads the CA certificate(s) of a deployment.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_chain(path)? {
        roots.add(c).map_err(|e| load_err("CA", path)(e.to_string()))?;
    }
    Ok(roots)
}

/// Reads a certificate chain (PEM, leaf first).
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let it = CertificateDer::pem_file_iter(path).map_err(|e| load_err("certificate", path)(e.to_string()))?;
    let chain: Vec<_> = it
        .collect::<Result<_, _>>()
        .map_err(|e| load_err("certificate", path)(e.to_string()))?;
    if chain.is_empty() {
        return Err(load_err("certificate", path)("no certificate in the file".into()));
    }
    Ok(chain)
}

/// Reads a private key (PEM).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| load_err("key", path)(e.to_string()))
}

/// The Ed25519 key every holder of `secret` derives (HKDF-SHA256), and a self-signed
/// certificate of it: the identity of a pre-shared-key deployment.
pub fn psk_identity(secret: &[u8]) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"baton replication psk v1");
    let prk = salt.extract(secret);
    let mut seed = [0u8; 32];
    prk.expand(&[b"ed25519 identity"], ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut seed))
        .map_err(|_| TlsError::Config("deriving the pre-shared-key identity failed".into()))?;
    // PKCS#8 v1 of an Ed25519 private key (RFC 8410 §7): a fixed prefix, then the seed.
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    pkcs8.extend_from_slice(&seed);
    let kp =
        KeyPair::try_from(pkcs8.as_slice()).map_err(|e| TlsError::Config(format!("pre-shared-key identity: {e}")))?;
    let mut params = CertificateParams::new(vec!["psk.baton".to_string()])
        .map_err(|e| TlsError::Config(format!("pre-shared-key identity: {e}")))?;
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(4000, 1, 1);
    let cert = params
        .self_signed(&kp)
        .map_err(|e| TlsError::Config(format!("pre-shared-key identity: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    Ok((vec![cert.der().clone()], key))
}

/// Files [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The CA certificate every process is given.
    pub ca: PathBuf,
    /// Per name: (certificate, key).
    pub certs: Vec<(String, PathBuf, PathBuf)>,
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| load_err("output", path)(e.to_string()))?;
    f.write_all(bytes).map_err(|e| load_err("output", path)(e.to_string()))
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("certificate generation: {e}"))
}

/// Makes a new CA in `dir` and one certificate per name (`<role>.<site>`, e.g.
/// `relay.osaka`), each usable as TLS client and server. Keys are written mode 0600.
pub fn generate(dir: &Path, names: &[String]) -> Result<Generated, TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| load_err("output directory", dir)(e.to_string()))?;
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "baton deployment CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;
    let ca = dir.join("ca.pem");
    write_file(&ca, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;
    let mut certs = Vec::new();
    for name in names {
        let role_ok = [Role::Primary, Role::Relay, Role::Standby]
            .iter()
            .any(|r| name.split('.').next() == Some(r.label()) && name.contains('.'));
        if !role_ok {
            return Err(TlsError::Config(format!(
                "name {name:?} is not <role>.<site> with role primary, relay or standby"
            )));
        }
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut p = CertificateParams::new(vec![name.clone()]).map_err(gen_err)?;
        p.distinguished_name.push(DnType::CommonName, name.as_str());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(gen_err)?;
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        write_file(&c, cert.pem().as_bytes(), 0o644)?;
        write_file(&k, key.serialize_pem().as_bytes(), 0o600)?;
        certs.push((name.clone(), c, k));
    }
    Ok(Generated { ca, certs })
}

/// Writes a new random 32-byte pre-shared key to `path` (mode 0600).
pub fn generate_psk(path: &Path) -> Result<(), TlsError> {
    let mut k = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
        .map_err(|_| TlsError::Config("no randomness for the pre-shared key".into()))?;
    write_file(path, &k, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_identity_is_the_same_for_the_same_secret_only() {
        let (a, _) = psk_identity(&[7u8; 32]).unwrap();
        let (b, _) = psk_identity(&[7u8; 32]).unwrap();
        let (c, _) = psk_identity(&[8u8; 32]).unwrap();
        let spki = |c: &CertificateDer<'_>| {
            webpki::EndEntityCert::try_from(c)
                .unwrap()
                .subject_public_key_info()
                .as_ref()
                .to_vec()
        };
        assert_eq!(spki(&a[0]), spki(&b[0]));
        assert_ne!(spki(&a[0]), spki(&c[0]));
    }

    #[test]
    fn generate_refuses_names_without_a_role() {
        let d = std::env::temp_dir().join(format!("baton-pki-{}", std::process::id()));
        assert!(generate(&d, &["web.osaka".into()]).is_err());
        assert!(generate(&d, &["relay".into()]).is_err());
        let g = generate(&d, &["relay.osaka".into()]).unwrap();
        assert_eq!(g.certs.len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
