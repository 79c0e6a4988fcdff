//! Where SDS secrets live while Weir uses them: a private directory (mode 0700, files 0600)
//! under the system's temporary directory, one set of PEM files per secret, removed when the
//! client stops. Weir's TLS contexts follow files, so writing a new version of a secret in place
//! is a rotation: the next refresh builds new handshakes' material from it and established
//! connections keep theirs.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::translate::secret::{Data, Part, SecretSpec};

/// The directory, removed on drop.
pub struct SdsDir {
    dir: PathBuf,
}

impl SdsDir {
    /// Creates a fresh directory for this process.
    pub fn create() -> std::io::Result<SdsDir> {
        let dir = std::env::temp_dir().join(format!(
            "weir-sds-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(SdsDir { dir })
    }

    /// The file of `part` of secret `name` (a digest of the name: secret names hold `/`).
    pub fn path(&self, name: &str, part: Part) -> PathBuf {
        let digest = hex::encode(&Sha256::digest(name.as_bytes())[..12]);
        self.dir.join(format!("{digest}.{}.pem", part.name()))
    }

    /// Checks a secret's material (PEM that parses: a chain, a key, a bundle): the files to
    /// write for it, for [`SdsDir::write`].
    pub fn prepare(&self, s: &SecretSpec) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
        let mut files = Vec::new();
        if let Some((cert, key)) = &s.cert {
            let (cert, key) = (bytes(cert)?, bytes(key)?);
            let path = self.path(&s.name, Part::Cert);
            crate::tls::material::chain(&cert, &path)
                .map_err(|e| format!("tls_certificate.certificate_chain: {e}"))?;
            crate::tls::material::key(&key, &self.path(&s.name, Part::Key))
                .map_err(|e| format!("tls_certificate.private_key: {e}"))?;
            files.push((path, cert));
            files.push((self.path(&s.name, Part::Key), key));
        }
        if let Some(ca) = &s.ca {
            let ca = bytes(ca)?;
            let path = self.path(&s.name, Part::Ca);
            crate::tls::material::chain(&ca, &path)
                .map_err(|e| format!("validation_context.trusted_ca: {e}"))?;
            files.push((path, ca));
        }
        Ok(files)
    }

    /// Writes prepared files, each replaced whole (written aside, then renamed over the old).
    pub fn write(&self, files: &[(PathBuf, Vec<u8>)]) -> Result<(), String> {
        for (path, content) in files {
            write_atomic(path, content).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Removes a secret's files (it is no longer subscribed to).
    pub fn remove(&self, name: &str) {
        for part in [Part::Cert, Part::Key, Part::Ca] {
            let _ = std::fs::remove_file(self.path(name, part));
        }
    }
}

impl Drop for SdsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bytes(d: &Data) -> Result<Vec<u8>, String> {
    match d {
        Data::Inline(b) => Ok(b.clone()),
        Data::File(f) => std::fs::read(f).map_err(|e| format!("{f}: {e}")),
    }
}

fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
