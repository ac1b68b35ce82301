//! Throwaway PKI for TLS tests (rcgen): a CA, a server leaf for localhost / 127.0.0.1, client leaves
//! with SAN URIs; and API keys.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// A distinct subject per certificate (OpenSSL takes a leaf whose subject equals its issuer for self-signed).
fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}
use std::path::{Path, PathBuf};

pub struct Pki {
    pub ca_pem: String,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub server_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name = dn("maas test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &ca_pem).unwrap();
        let mut pki = Pki {
            ca_pem,
            ca,
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            server_key_pem: String::new(),
            issuer,
        };
        pki.rotate_server();
        pki
    }

    /// A fresh server leaf (new key) written over the server files; returns its PEM.
    pub fn rotate_server(&mut self) -> String {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name = dn("localhost");
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        self.server_key_pem = key.serialize_pem();
        std::fs::write(&self.server_cert, cert.pem()).unwrap();
        std::fs::write(&self.server_key, &self.server_key_pem).unwrap();
        cert.pem()
    }

    pub fn client(&self, uri: &str) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.distinguished_name = dn(uri);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// A key: (token, the `keys { ... }` entry).
pub fn key(id: &str, expires: Option<&str>) -> (String, String) {
    let (token, id, digest) = maas::tenancy::keys::generate(Some(id)).unwrap();
    let exp = expires.map(|e| format!(" expires: \"{e}\"")).unwrap_or_default();
    (token, format!("keys {{ id: \"{id}\" sha256: \"{}\"{exp} }}", digest.to_hex()))
}
