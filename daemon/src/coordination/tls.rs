//! TLS to the coordination database, as its URL asks.
//!
//! `sslmode=require` encrypts the connection and verifies the server's certificate and name:
//! against `sslrootcert` (a PEM file of the facility's CA) when the URL gives one, else
//! against the system's trusted roots. Without `sslmode=require` the connection is plain, as
//! libpq's `prefer` is in practice with an unverifiable certificate: so a database on a
//! trusted network needs nothing, and one across a network says `require`. rustls (pure Rust,
//! with ring) rather than native-tls: building the daemon needs no OpenSSL headers.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use postgres::config::SslMode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A parsed `postgres_url`: the client settings and, for `sslmode=require`, the connector.
#[derive(Clone)]
pub struct Target {
    pub config: postgres::Config,
    pub tls: Option<MakeRustlsConnect>,
}

/// Parses `url` (URL or `key=value` form), taking out `sslrootcert`, which the client does not
/// know, and builds the TLS connector `sslmode=require` needs.
///
/// # Errors
///
/// What is wrong with the URL or the root certificates, in words.
pub fn parse(url: &str) -> Result<Target, String> {
    let (rest, root) = take_root_cert(url);
    let config = postgres::Config::from_str(&rest).map_err(|e| e.to_string())?;
    let tls = match config.get_ssl_mode() {
        SslMode::Require => Some(connector(root)?),
        _ => None,
    };
    Ok(Target { config, tls })
}

/// `url` without its `sslrootcert` parameter, and that parameter's path.
fn take_root_cert(url: &str) -> (String, Option<PathBuf>) {
    const KEY: &str = "sslrootcert=";
    if let Some((base, query)) = url.split_once('?') {
        let mut root = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.strip_prefix(KEY) {
                Some(value) => {
                    root = Some(PathBuf::from(percent_decode(value)));
                    false
                }
                None => true,
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, root);
    }
    if url.contains("://") {
        return (url.to_owned(), None);
    }
    // key=value form: whitespace-separated (values with spaces are not supported here).
    let mut root = None;
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|pair| match pair.strip_prefix(KEY) {
            Some(value) => {
                root = Some(PathBuf::from(value.trim_matches('\'')));
                false
            }
            None => true,
        })
        .collect();
    (kept.join(" "), root)
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(
                    u8::try_from(hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)).unwrap_or(b'?'),
                );
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn connector(root: Option<PathBuf>) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system root rustls cannot parse is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(
                    "sslmode=require: the system has no trusted root certificates; give sslrootcert"
                        .to_owned(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslrootcert_is_taken_out_of_either_form() {
        let (rest, root) =
            take_root_cert("postgresql://u@db/x?sslmode=require&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(rest, "postgresql://u@db/x?sslmode=require");
        assert_eq!(root, Some(PathBuf::from("/etc/ca.pem")));
        let (rest, root) = take_root_cert("postgresql://u@db/x?sslrootcert=/ca.pem");
        assert_eq!(rest, "postgresql://u@db/x");
        assert_eq!(root, Some(PathBuf::from("/ca.pem")));
        let (rest, root) = take_root_cert("host=db sslmode=require sslrootcert=/ca.pem");
        assert_eq!(rest, "host=db sslmode=require");
        assert_eq!(root, Some(PathBuf::from("/ca.pem")));
        assert_eq!(take_root_cert("postgresql://db/x").1, None);
    }

    #[test]
    fn require_without_a_readable_root_is_refused_plain_needs_none() {
        let error = parse("postgresql://db/x?sslmode=require&sslrootcert=/nonexistent/ca.pem")
            .err()
            .unwrap_or_default();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        assert!(parse("postgresql://db/x").is_ok_and(|t| t.tls.is_none()));
    }
}
