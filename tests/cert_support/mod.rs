//! Shared by the TLS tests: a certificate authority (rcgen) that signs real certificates
//! into PEM files in a directory, so no key material is checked in.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A certificate authority that signs certificates into PEM files in a directory.
pub struct Ca {
    name: String,
    params: CertificateParams,
    key: KeyPair,
    dir: PathBuf,
}

impl Ca {
    /// A new self-signed CA named `name`, its certificate written to `dir/{name}.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), certificate.pem()).unwrap();
        Ca {
            name: name.to_string(),
            params,
            key,
            dir: dir.to_path_buf(),
        }
    }

    /// The CA's certificate (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// Signs a certificate for `names` (DNS names or IP addresses); returns (cert, key) paths.
    pub fn sign(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.sign_valid(file, names, false)
    }

    /// Like [`sign`](Ca::sign); with `expired`, valid only in 2020.
    pub fn sign_valid(&self, file: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        self.sign_named(file, None, names, expired)
    }

    /// Like [`sign_valid`](Ca::sign_valid), with `common_name` as the subject's common name
    /// (a user's name, for certificate authentication).
    pub fn sign_named(
        &self,
        file: &str,
        common_name: Option<&str>,
        names: &[&str],
        expired: bool,
    ) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        if let Some(common_name) = common_name {
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
        }
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let certificate = params.signed_by(&key, &issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        // Written beside and renamed: a reader never sees half a file.
        let temporary = self.dir.join(format!("{file}.tmp"));
        std::fs::write(&temporary, certificate.pem()).unwrap();
        std::fs::rename(&temporary, &cert_path).unwrap();
        std::fs::write(&temporary, key.serialize_pem()).unwrap();
        std::fs::rename(&temporary, &key_path).unwrap();
        (cert_path, key_path)
    }
}
