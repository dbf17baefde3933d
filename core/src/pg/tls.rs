//! The rustls side of [`super`]: the certificate files, the roots, and the server
//! certificate check each `sslmode` asks for. The crypto provider is ring, the one
//! pgwire-replication uses for the replication connection; it is passed explicitly,
//! so the process-wide default (which pgwire-replication installs) does not matter.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{SettingsError, TlsSettings, Verification};

impl TlsSettings {
    /// The rustls configuration: reads the certificate files and builds the verifier.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, SettingsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let verifier: Arc<dyn ServerCertVerifier> = match self.verification() {
            Verification::None => Arc::new(Verifier {
                roots: None,
                algorithms,
            }),
            Verification::Chain => Arc::new(Verifier {
                roots: Some(Arc::new(self.roots()?)),
                algorithms,
            }),
            Verification::ChainAndHost => WebPkiServerVerifier::builder_with_provider(
                Arc::new(self.roots()?),
                provider.clone(),
            )
            .build()
            .map_err(|e| SettingsError::new("sslrootcert", e.to_string()))?,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SettingsError::new("sslmode", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match (&self.cert, &self.key) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(_), None) => Err(SettingsError::new(
                "sslkey",
                "is required with sslcert (the client certificate's private key)",
            )),
            (None, Some(_)) => Err(SettingsError::new(
                "sslcert",
                "is required with sslkey (the client certificate)",
            )),
            (Some(cert), Some(key)) => {
                let chain = read_certs("sslcert", cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    SettingsError::new("sslkey", format!("cannot read {}: {e}", key.display()))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| SettingsError::new("sslcert", e.to_string()))
            }
        }
    }

    /// `sslrootcert`'s certificates, or the webpki roots when it is not given.
    fn roots(&self) -> Result<RootCertStore, SettingsError> {
        let Some(path) = &self.root_cert else {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            });
        };
        let mut roots = RootCertStore::empty();
        for cert in read_certs("sslrootcert", path)? {
            roots.add(cert).map_err(|e| {
                SettingsError::new("sslrootcert", format!("{}: {e}", path.display()))
            })?;
        }
        Ok(roots)
    }
}

/// Every certificate of a PEM file; none is an error.
fn read_certs(
    parameter: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        SettingsError::new(parameter, format!("cannot read {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if certs.is_empty() {
        return Err(unreadable(&"no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Checks what the settings ask of a server certificate: nothing, or the chain
/// only (`verify-ca`). `verify-full` uses rustls' own [`WebPkiServerVerifier`].
/// Handshake signatures are always verified.
#[derive(Debug)]
struct Verifier {
    /// The trusted roots; `None` checks no chain.
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
