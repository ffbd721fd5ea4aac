//! TLS for both connections, with libpq's `sslmode` semantics on rustls.

use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::{ConnectOptions, Host, SslMode};
use crate::error::Error;

/// Builds the rustls configuration for `opts`, or `None` for `sslmode=disable`.
pub fn client_config(opts: &ConnectOptions) -> Result<Option<Arc<ClientConfig>>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&opts.host_list(), e.to_string()))?;
    let config = match opts.sslmode {
        SslMode::Disable => return Ok(None),
        // As libpq: without verification, TLS only protects against passive sniffing.
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(root_store(opts)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| tls_error(&opts.host_list(), e.to_string()))?;
            if opts.sslmode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(Some(Arc::new(config)))
}

/// The server name to present (SNI) and to check the certificate against: the
/// host being connected to (not its `hostaddr`), as in libpq.
pub fn server_name(host: &Host) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.host.clone()).map_err(|e| {
        tls_error(
            &host.to_string(),
            format!("'{}' is not a valid server name: {e}", host.host),
        )
    })
}

fn root_store(opts: &ConnectOptions) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    match &opts.sslrootcert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                tls_error(
                    &opts.host_list(),
                    format!("cannot read sslrootcert {}: {e}", path.display()),
                )
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    tls_error(
                        &opts.host_list(),
                        format!("bad PEM in sslrootcert {}: {e}", path.display()),
                    )
                })?;
                roots.add(cert).map_err(|e| {
                    tls_error(
                        &opts.host_list(),
                        format!("unusable CA in {}: {e}", path.display()),
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(tls_error(
            &opts.host_list(),
            "no CA certificates to verify the server with: set sslrootcert".to_owned(),
        ));
    }
    Ok(roots)
}

/// The admin connection's handshake refusal as the replication connection reports
/// it: `Error::Tls` with rustls's reason, which is not retried (a wrong name or CA
/// does not fix itself). tokio-postgres says only "error performing TLS handshake"
/// and keeps the reason in its source.
pub(crate) fn handshake_refusal(host: &Host, e: &tokio_postgres::Error) -> Option<Error> {
    let io = std::error::Error::source(e)?.downcast_ref::<std::io::Error>()?;
    let reason = io.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(tls_error(&host.to_string(), reason.to_string()))
}

fn tls_error(peer: &str, reason: String) -> Error {
    Error::Tls {
        peer: peer.to_owned(),
        reason,
    }
}

/// `verify-ca`: the chain must be valid, whatever name the certificate carries.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` / `require`: encryption without authentication of the server.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
