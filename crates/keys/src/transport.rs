//! How the signer protocol travels: a Unix socket on one machine (the default, `serve`'s
//! child), or TCP with mutually authenticated TLS 1.3 when the signer runs elsewhere. With TLS
//! both sides present a certificate issued by the same operator CA and refuse any peer that
//! does not: the signer signs only for clients holding a client certificate, and clients sign
//! only through a signer holding a server certificate for the name they dialled.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

use crate::{Error, Result};

/// How long a signer exchange may wait on the other side.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection carrying the protocol, whatever it runs over.
pub(crate) trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// The PEM files of one side of a mutually authenticated TLS link.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that issued both sides' certificates (the only one trusted).
    pub ca: PathBuf,
    /// This side's certificate chain.
    pub cert: PathBuf,
    /// This side's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

fn tls_err(what: impl std::fmt::Display) -> Error {
    Error::Tls(what.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsFiles {
    fn roots(&self) -> Result<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        for cert in certs(&self.ca)? {
            roots
                .add(cert)
                .map_err(|e| tls_err(format!("{}: {e}", self.ca.display())))?;
        }
        Ok(Arc::new(roots))
    }

    fn chain_and_key(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| tls_err(format!("{}: {e}", self.key.display())))?;
        Ok((certs(&self.cert)?, key))
    }

    /// The signer's side: TLS 1.3 only, a client certificate from the CA required.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .build()
            .map_err(tls_err)?;
        let (chain, key) = self.chain_and_key()?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(tls_err)?;
        Ok(Arc::new(config))
    }

    fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let (chain, key) = self.chain_and_key()?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)
            .map_err(tls_err)?;
        Ok(Arc::new(config))
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("{}: no certificate", path.display())));
    }
    Ok(certs)
}

/// Where a client reaches the signer.
#[derive(Clone)]
pub(crate) enum Endpoint {
    Unix(PathBuf),
    Tls {
        /// `host:port` as dialled.
        address: String,
        name: ServerName<'static>,
        config: Arc<ClientConfig>,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tls { address, .. } => write!(f, "tls://{address}"),
        }
    }
}

impl Endpoint {
    /// The signer at `host:port`, over mutually authenticated TLS with `files`.
    pub(crate) fn tls(address: &str, files: &TlsFiles) -> Result<Self> {
        let host = match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host,
            _ => return Err(tls_err(format!("{address:?} is not host:port"))),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name =
            ServerName::try_from(host.to_owned()).map_err(|e| tls_err(format!("{host:?}: {e}")))?;
        Ok(Endpoint::Tls {
            address: address.to_owned(),
            name,
            config: files.client_config()?,
        })
    }

    /// A fresh connection, with I/O timeouts.
    pub(crate) fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        match self {
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(Box::new(s))
            }
            Endpoint::Tls {
                address,
                name,
                config,
            } => {
                // Bounded: a signer host that drops packets must not hold a minting thread
                // for the system's minutes-long default.
                let addr = std::net::ToSocketAddrs::to_socket_addrs(address)?
                    .next()
                    .ok_or_else(|| std::io::Error::other(format!("{address}: no address")))?;
                let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
                tcp.set_read_timeout(Some(IO_TIMEOUT))?;
                tcp.set_write_timeout(Some(IO_TIMEOUT))?;
                tcp.set_nodelay(true)?;
                let conn = ClientConnection::new(config.clone(), name.clone())
                    .map_err(std::io::Error::other)?;
                let mut tls = StreamOwned::new(conn, tcp);
                // Handshake now, so a signer with a refused certificate fails the connect.
                // (Under TLS 1.3 the signer's refusal of *our* certificate arrives with the
                // first answer instead.)
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock)?;
                }
                Ok(Box::new(tls))
            }
        }
    }
}
