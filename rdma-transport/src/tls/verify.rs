//! Who a link accepts: a certificate that chains to the deployment's CA and names the role
//! the link expects, or (pre-shared key) the public key derived from the shared secret.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore};

use super::Role;

/// Why a peer's certificate was refused beyond what webpki checks.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("certificate names {names:?}; this link accepts a {want} (a name `{want}.<site>`)")]
    Role { names: Vec<String>, want: &'static str },
    #[error("certificate is not the deployment's pre-shared-key identity (the peer holds another key)")]
    Psk,
}

fn refused(r: Refused) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

fn algs() -> WebPkiSupportedAlgorithms {
    super::provider().signature_verification_algorithms
}

/// The DNS name of `cert` whose first label is `role`'s, checked by webpki as a subject name.
fn role_name(cert: &CertificateDer<'_>, role: Role) -> Result<String, Error> {
    let ee =
        webpki::EndEntityCert::try_from(cert).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let names: Vec<String> = ee.valid_dns_names().map(str::to_owned).collect();
    let found = names
        .iter()
        .find(|n| n.split('.').next() == Some(role.label()) && n.contains('.'))
        .cloned();
    let Some(name) = found else {
        return Err(refused(Refused::Role {
            names,
            want: role.label(),
        }));
    };
    let sn =
        ServerName::try_from(name.as_str()).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    ee.verify_is_valid_for_subject_name(&sn)
        .map_err(|_| Error::InvalidCertificate(CertificateError::NotValidForName))?;
    Ok(name)
}

fn spki(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(ee.subject_public_key_info().as_ref().to_vec())
}

/// Checks this process's own certificate at load: chains to the CA, names `own`.
pub(super) fn check_own(chain: &[CertificateDer<'static>], roots: &RootCertStore, own: Role) -> Result<String, String> {
    let Some(ee) = chain.first() else {
        return Err("the certificate file holds no certificate".into());
    };
    let parsed = rustls::server::ParsedCertificate::try_from(ee).map_err(|e| format!("own certificate: {e}"))?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, roots, &chain[1..], UnixTime::now(), algs().all)
        .map_err(|e| format!("own certificate does not chain to the CA: {e}"))?;
    role_name(ee, own).map_err(|e| format!("own certificate does not fit this process ({}): {e}", own.label()))
}

/// Verifies the peer of one link, on either side of the handshake.
#[derive(Debug)]
pub(super) struct PeerVerifier {
    /// Certificates mode: the CA and a webpki client verifier over it.
    ca: Option<(Arc<RootCertStore>, Arc<dyn ClientCertVerifier>)>,
    /// PSK mode: the public key every peer must hold.
    psk_spki: Option<Vec<u8>>,
    expect: Role,
    hints: Vec<DistinguishedName>,
}

impl PeerVerifier {
    pub(super) fn new(roots: Option<Arc<RootCertStore>>, own: CertificateDer<'static>, expect: Role) -> Self {
        let ca = roots.and_then(|r| {
            let v = WebPkiClientVerifier::builder(r.clone()).build().ok()?;
            Some((r, v))
        });
        let psk_spki = if ca.is_none() { spki(&own) } else { None };
        Self {
            ca,
            psk_spki,
            expect,
            hints: Vec::new(),
        }
    }

    fn check_psk(&self, ee: &CertificateDer<'_>) -> Result<(), Error> {
        match (&self.psk_spki, spki(ee)) {
            (Some(want), Some(got)) if *want == got => Ok(()),
            _ => Err(refused(Refused::Psk)),
        }
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match &self.ca {
            Some((roots, _)) => {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    roots,
                    intermediates,
                    now,
                    algs().all,
                )?;
                role_name(end_entity, self.expect)?;
            }
            None => self.check_psk(end_entity)?,
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &algs())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &algs())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        algs().supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match &self.ca {
            Some((_, webpki)) => {
                webpki.verify_client_cert(end_entity, intermediates, now)?;
                role_name(end_entity, self.expect)?;
            }
            None => self.check_psk(end_entity)?,
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &algs())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &algs())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        algs().supported_schemes()
    }
}
