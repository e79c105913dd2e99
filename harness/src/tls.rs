//! The one certificate authority and serving certificate both API servers (embedded and the
//! envtest kube-apiserver) present on 127.0.0.1.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A fresh CA and a leaf it signed, valid for the names a kubeconfig or an in-cluster client
/// might use for a local API server.
pub struct ServingCert {
    /// The CA certificate (what the kubeconfig trusts), PEM.
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
    /// The leaf certificate, PEM.
    pub leaf_pem: String,
    /// The leaf certificate, DER.
    pub leaf_der: Vec<u8>,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The leaf's private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

/// A certificate authority that can issue more than one leaf (the real-cluster lab needs a
/// serving certificate for kube-apiserver and a client certificate for its calls to kubelets).
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
    /// The CA's private key, PKCS#8 PEM (kube-controller-manager signs with it).
    pub key_pem: String,
}

/// A leaf certificate and its key.
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl Authority {
    /// A fresh self-signed CA called `name`.
    pub fn new(name: &str) -> Result<Authority, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = ca.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Authority {
            ca_pem: cert.pem(),
            ca_der: cert.der().to_vec(),
            key_pem,
            issuer: Issuer::new(ca, key),
        })
    }

    /// A serving certificate for `dns` names and `ips`.
    pub fn server(
        &self,
        cn: &str,
        dns: &[&str],
        ips: &[std::net::IpAddr],
    ) -> Result<Leaf, rcgen::Error> {
        let mut p = CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
        p.subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p)
    }

    /// A client certificate: Kubernetes reads the user from the CN and groups from O.
    pub fn client(&self, cn: &str, groups: &[&str]) -> Result<Leaf, rcgen::Error> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        for g in groups {
            p.distinguished_name.push(DnType::OrganizationName, *g);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p)
    }

    fn sign(&self, params: CertificateParams) -> Result<Leaf, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }
}

/// Issues a CA named `ca_name` and a serving certificate named `leaf_name` for `localhost`,
/// `kubernetes`, `kubernetes.default.svc`, 127.0.0.1 and ::1.
///
/// A leaf rather than a self-signed server certificate: webpki (kube-rs) rejects a CA
/// certificate used as the server's.
pub fn serving_cert(ca_name: &str, leaf_name: &str) -> Result<ServingCert, rcgen::Error> {
    let ca = Authority::new(ca_name)?;
    let leaf = ca.server(
        leaf_name,
        &["localhost", "kubernetes", "kubernetes.default.svc"],
        &[
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ],
    )?;
    Ok(ServingCert {
        ca_pem: ca.ca_pem,
        ca_der: ca.ca_der,
        leaf_pem: leaf.cert_pem,
        leaf_der: leaf.cert_der,
        key_pem: leaf.key_pem,
        key_der: leaf.key_der,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn issues_a_ca_and_a_leaf() {
        let c = super::serving_cert("test-ca", "test-leaf").unwrap();
        assert!(c.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(c.leaf_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(c.key_pem.contains("PRIVATE KEY"));
        assert_ne!(c.ca_der, c.leaf_der);
    }
}
