//! `weir certs`: a development PKI, so that a newcomer can bring up an mTLS mesh of Weir
//! instances in minutes. This module owns minting a CA, issuing SPIFFE workload certificates
//! signed by it, the one-shot `mesh` layout `docs/mtls.md` and `examples/mesh/` use, SPIFFE ID
//! validation for what it issues, and writing the files (private keys mode 0600, every file
//! written to a temporary name and renamed into place, so a watching Weir never reads half a file).
//!
//! - CA: ECDSA P-256, basic constraints CA (path length 0), key usage keyCertSign + cRLSign +
//!   digitalSignature, subject `CN=weir development CA (<TD>), O=weir`, URI SAN `spiffe://<TD>`
//!   (how SPIFFE trust bundles name their domain).
//! - Workload: ECDSA P-256, not a CA, key usage digitalSignature + keyEncipherment, EKU serverAuth
//!   and clientAuth (a sidecar is both), URI SAN = the SPIFFE ID, DNS SANs from `--dns`, subject
//!   `CN=<name>, O=weir`. Valid from five minutes ago (clock skew); never past the CA's expiry.
//!
//! Serial numbers are rcgen's: the first 20 bytes of the SHA-256 of the certificate's public
//! key, and every certificate gets a freshly generated key, so serials are unique and
//! unpredictable. Not for production: keys sit unencrypted on disk and nothing revokes.
//!
//! Over 700 lines on purpose: the code is one flow (options → checks → rcgen → files) in about
//! 670 of them; the rest are its unit tests, which read each file back with x509-parser and
//! rustls.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::{Ia5String, PrintableString, TeletexString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use x509_parser::certificate::X509Certificate;

use crate::tls::spiffe;
use x509_parser::extensions::{GeneralName, ParsedExtension};

/// Trust domain when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "example.org";
/// CA lifetime when none is given.
pub const DEFAULT_CA_DAYS: u32 = 365;
/// Workload certificate lifetime when none is given.
pub const DEFAULT_LEAF_DAYS: u32 = 30;
/// Longest lifetime accepted for any certificate (about 100 years).
pub const MAX_DAYS: u32 = 36_500;
/// How far in the past `not_before` is set, for peers whose clocks run a little behind.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The CA certificate's file name inside its folder.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key's file name inside its folder.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The workloads `mesh` issues: name, SPIFFE ID path, DNS name.
pub const MESH_WORKLOADS: [(&str, &str, &str); 2] = [
    ("front", "/ns/default/sa/front", "front.local"),
    ("back", "/ns/default/sa/back", "back.local"),
];

/// Why a `weir certs` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0} already exists (use --force to overwrite it)")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid SPIFFE ID `{id}`: {reason}")]
    BadSpiffeId { id: String, reason: String },
    #[error("invalid trust domain `{domain}`: {reason}")]
    BadTrustDomain { domain: String, reason: String },
    #[error(
        "invalid DNS name `{0}`: labels of letters, digits and `-` (at most 63 bytes each) \
         separated by `.`, optionally starting with `*.`"
    )]
    BadDnsName(String),
    #[error("invalid certificate name `{name}`: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("--days must be between 1 and {MAX_DAYS}, got {0}")]
    BadDays(u32),
    #[error("{path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error(
        "the SPIFFE ID {id} is in trust domain `{id_domain}` but the CA in {ca} is for `{ca_domain}` \
         (peers that accept only the CA's trust domain would refuse it; use --force to issue anyway)"
    )]
    TrustDomainMismatch {
        id: String,
        id_domain: String,
        ca: PathBuf,
        ca_domain: String,
    },
    #[error(
        "the CA in {0} names no trust domain (no spiffe://TD URI SAN), so the SPIFFE ID's \
         trust domain cannot be checked against it; use --force to issue anyway"
    )]
    CaWithoutTrustDomain(PathBuf),
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A SPIFFE ID, `spiffe://<trust_domain><path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    /// Lower-case letters, digits, `.`, `-` and `_`.
    pub trust_domain: String,
    /// Non-empty, starting with `/`, e.g. `/ns/default/sa/front`.
    pub path: String,
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// Parses a workload SPIFFE ID (the rules of [`crate::tls::spiffe`], plus a non-empty path:
/// a certificate names a workload, not a whole trust domain).
pub fn parse_spiffe_id(id: &str) -> Result<SpiffeId, CertsError> {
    let bad = |reason: String| CertsError::BadSpiffeId {
        id: id.to_owned(),
        reason,
    };
    let parsed = spiffe::parse(id).map_err(|e| bad(e.to_string()))?;
    if parsed.path.is_empty() || parsed.path == "/" {
        return Err(bad(
            "a workload ID needs a path after the trust domain, e.g. spiffe://example.org/ns/default/sa/web".into(),
        ));
    }
    Ok(SpiffeId {
        trust_domain: parsed.trust_domain.to_owned(),
        path: parsed.path.to_owned(),
    })
}

/// Checks a trust domain name: 1 to 255 bytes of lower-case letters, digits, `.`, `-` and `_`.
pub fn validate_trust_domain(domain: &str) -> Result<(), CertsError> {
    match spiffe::trust_domain_problem(domain) {
        None => Ok(()),
        Some(reason) => Err(CertsError::BadTrustDomain {
            domain: domain.to_owned(),
            reason: reason.to_owned(),
        }),
    }
}

/// What `weir certs ca` does.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Folder for `ca.pem` and `ca-key.pem` (created if missing).
    pub out: PathBuf,
    pub trust_domain: String,
    pub days: u32,
    /// Overwrite existing files.
    pub force: bool,
}

/// A CA that was minted.
#[derive(Debug, Clone)]
pub struct MintedCa {
    /// The files written: the certificate, then the key.
    pub files: Vec<PathBuf>,
    pub trust_domain: String,
    pub not_after: SystemTime,
}

/// What `weir certs issue` does.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Folder holding `ca.pem` and `ca-key.pem`.
    pub ca: PathBuf,
    /// Folder for `NAME.pem` and `NAME-key.pem` (created if missing).
    pub out: PathBuf,
    pub name: String,
    pub spiffe_id: String,
    pub dns: Vec<String>,
    pub days: u32,
    /// Overwrite existing files, and issue even when the trust domain differs from the CA's.
    pub force: bool,
}

/// A workload certificate that was issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The files written: the certificate, then the key.
    pub files: Vec<PathBuf>,
    /// The certificate's name (file stem and subject CN).
    pub name: String,
    pub spiffe_id: SpiffeId,
    pub dns: Vec<String>,
    pub not_after: SystemTime,
    /// True when `--days` would have outlived the CA and the expiry was cut to the CA's.
    pub capped_by_ca: bool,
}

/// What `weir certs mesh` does.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Folder for the CA and the workloads' files (created if missing).
    pub out: PathBuf,
    pub trust_domain: String,
    /// Overwrite existing files.
    pub force: bool,
}

/// What `weir certs mesh` wrote.
#[derive(Debug, Clone)]
pub struct Mesh {
    pub ca: MintedCa,
    /// `front`, then `back`.
    pub workloads: Vec<Issued>,
}

impl Mesh {
    /// Every file written, in order.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.ca
            .files
            .iter()
            .chain(self.workloads.iter().flat_map(|w| w.files.iter()))
    }
}

/// Mints a self-signed development CA into `opts.out`: `ca.pem` and `ca-key.pem` (mode 0600).
pub fn mint_ca(opts: &CaOptions) -> Result<MintedCa, CertsError> {
    validate_trust_domain(&opts.trust_domain)?;
    check_days(opts.days)?;
    let cert_path = opts.out.join(CA_CERT_FILE);
    let key_path = opts.out.join(CA_KEY_FILE);
    refuse_existing(&[&cert_path, &key_path], opts.force)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("weir development CA ({})", opts.trust_domain));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let uri = Ia5String::try_from(format!("spiffe://{}", opts.trust_domain))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let now = SystemTime::now();
    let not_after = now + days(opts.days);
    set_validity(&mut params, now - CLOCK_SKEW, not_after);
    let cert = params.self_signed(&key)?;

    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(MintedCa {
        files: vec![cert_path, key_path],
        trust_domain: opts.trust_domain.clone(),
        not_after: whole_seconds(not_after),
    })
}

/// Issues a workload certificate signed by the CA in `opts.ca`: `NAME.pem` and `NAME-key.pem`
/// (mode 0600) in `opts.out`.
pub fn issue(opts: &IssueOptions) -> Result<Issued, CertsError> {
    check_name(&opts.name)?;
    check_days(opts.days)?;
    let id = parse_spiffe_id(&opts.spiffe_id)?;
    let dns = opts
        .dns
        .iter()
        .map(|d| check_dns_name(d).map(|()| d.to_ascii_lowercase()))
        .collect::<Result<Vec<_>, _>>()?;
    let ca = LoadedCa::load(&opts.ca)?;
    match &ca.trust_domain {
        Some(td) if *td != id.trust_domain && !opts.force => {
            return Err(CertsError::TrustDomainMismatch {
                id: id.to_string(),
                id_domain: id.trust_domain.clone(),
                ca: opts.ca.clone(),
                ca_domain: td.clone(),
            });
        }
        None if !opts.force => return Err(CertsError::CaWithoutTrustDomain(opts.ca.clone())),
        _ => {}
    }
    let cert_path = opts.out.join(format!("{}.pem", opts.name));
    let key_path = opts.out.join(format!("{}-key.pem", opts.name));
    refuse_existing(&[&cert_path, &key_path], opts.force)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&opts.name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names =
        std::iter::once(Ia5String::try_from(id.to_string()).map(SanType::URI))
            .chain(
                dns.iter()
                    .map(|d| Ia5String::try_from(d.as_str()).map(SanType::DnsName)),
            )
            .collect::<Result<_, _>>()?;
    let now = SystemTime::now();
    let wanted = now + days(opts.days);
    let capped_by_ca = wanted > ca.not_after;
    let not_after = wanted.min(ca.not_after);
    set_validity(&mut params, now - CLOCK_SKEW, not_after);
    let cert = params.signed_by(&key, &ca.issuer)?;

    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(Issued {
        files: vec![cert_path, key_path],
        name: opts.name.clone(),
        spiffe_id: id,
        dns,
        not_after: whole_seconds(not_after),
        capped_by_ca,
    })
}

/// Mints a CA and the two workloads of `examples/mesh/`, `front` and `back`, into `opts.out`.
/// Without `force`, nothing is written if any of the six files already exists.
pub fn mesh(opts: &MeshOptions) -> Result<Mesh, CertsError> {
    validate_trust_domain(&opts.trust_domain)?;
    let mut targets = vec![opts.out.join(CA_CERT_FILE), opts.out.join(CA_KEY_FILE)];
    for (name, _, _) in MESH_WORKLOADS {
        targets.push(opts.out.join(format!("{name}.pem")));
        targets.push(opts.out.join(format!("{name}-key.pem")));
    }
    refuse_existing(&targets.iter().collect::<Vec<_>>(), opts.force)?;
    let ca = mint_ca(&CaOptions {
        out: opts.out.clone(),
        trust_domain: opts.trust_domain.clone(),
        days: DEFAULT_CA_DAYS,
        force: opts.force,
    })?;
    let workloads = MESH_WORKLOADS
        .iter()
        .map(|(name, path, dns)| {
            issue(&IssueOptions {
                ca: opts.out.clone(),
                out: opts.out.clone(),
                name: (*name).to_owned(),
                spiffe_id: format!("spiffe://{}{path}", opts.trust_domain),
                dns: vec![(*dns).to_owned()],
                days: DEFAULT_LEAF_DAYS,
                force: opts.force,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Mesh { ca, workloads })
}

/// The commands to run after `mesh` wrote into `out`. When `out` is a `certs` folder next to
/// `front.yaml` and `back.yaml` (as in `examples/mesh/`), these start the pair and send a request;
/// otherwise they say how to use the files.
pub fn mesh_next_steps(out: &Path) -> Vec<String> {
    let manifests = out
        .parent()
        .filter(|_| out.file_name() == Some("certs".as_ref()))
        .map(|p| (p.join("back.yaml"), p.join("front.yaml")))
        .filter(|(b, f)| b.is_file() && f.is_file());
    match manifests {
        Some((back, front)) => vec![
            format!(
                "weir run -c {}    # mTLS listener on 127.0.0.1:10443",
                back.display()
            ),
            format!(
                "weir run -c {}   # plain HTTP on 127.0.0.1:10080, mTLS to back",
                front.display()
            ),
            "curl -i http://127.0.0.1:10080/".to_owned(),
        ],
        None => vec![
            "reference these files from the `tls:` sections of your manifests (relative paths \
             resolve from the manifest's folder);"
                .to_owned(),
            "examples/mesh/ holds a ready pair: `weir certs mesh --out examples/mesh/certs`"
                .to_owned(),
        ],
    }
}

/// A CA read back from its folder: what signing needs, plus what `issue` checks against.
struct LoadedCa {
    issuer: Issuer<'static, KeyPair>,
    trust_domain: Option<String>,
    not_after: SystemTime,
}

impl LoadedCa {
    fn load(dir: &Path) -> Result<LoadedCa, CertsError> {
        if dir.is_file() {
            return Err(CertsError::BadCa {
                path: dir.to_owned(),
                reason: format!(
                    "--ca takes the folder holding {CA_CERT_FILE} and {CA_KEY_FILE}, not a file"
                ),
            });
        }
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let bad = |path: &Path, reason: String| CertsError::BadCa {
            path: path.to_owned(),
            reason,
        };
        let cert_pem = read(&cert_path)?;
        let key_pem = String::from_utf8(read(&key_path)?)
            .map_err(|_| bad(&key_path, "not a PEM file".into()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| bad(&key_path, format!("not a usable private key: {e}")))?;

        let (_, pem) = x509_parser::pem::parse_x509_pem(&cert_pem)
            .map_err(|e| bad(&cert_path, format!("not a PEM certificate: {e}")))?;
        if pem.label != "CERTIFICATE" {
            return Err(bad(
                &cert_path,
                format!("holds a {} PEM block, not a CERTIFICATE", pem.label),
            ));
        }
        let x509 = pem
            .parse_x509()
            .map_err(|e| bad(&cert_path, format!("not an X.509 certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(bad(
                &cert_path,
                "not a CA certificate (basic constraints CA:FALSE or missing)".into(),
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(bad(
                &key_path,
                format!("this key does not belong to the certificate in {CA_CERT_FILE}"),
            ));
        }
        let not_after = unix_to_system(x509.validity().not_after.timestamp());
        if not_after <= SystemTime::now() {
            return Err(bad(
                &cert_path,
                format!(
                    "the CA expired at {}; mint a new one with `weir certs ca`",
                    humantime::format_rfc3339_seconds(not_after)
                ),
            ));
        }
        let trust_domain = ca_trust_domain(&x509);
        let distinguished_name = name_of(&x509)
            .map_err(|reason| bad(&cert_path, format!("unsupported subject: {reason}")))?;
        // The CA's own subject key identifier, so the leaves' authority key identifier matches it
        // whatever method made it.
        let key_identifier_method = x509
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(ki) => {
                    Some(KeyIdMethod::PreSpecified(ki.0.to_vec()))
                }
                _ => None,
            })
            .unwrap_or(KeyIdMethod::Sha256);
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name;
        params.key_identifier_method = key_identifier_method;
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(LoadedCa {
            issuer: Issuer::new(params, key),
            trust_domain,
            not_after,
        })
    }
}

/// The trust domain a CA names with a `spiffe://TD` URI SAN, if it has one.
fn ca_trust_domain(x509: &X509Certificate<'_>) -> Option<String> {
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|gn| match gn {
        GeneralName::URI(uri) => spiffe::parse(uri).ok().map(|id| id.trust_domain.to_owned()),
        _ => None,
    })
}

/// The CA's subject as rcgen needs it for the leaves' issuer field: same attributes, same string
/// types (chain building compares the encoded names).
fn name_of(x509: &X509Certificate<'_>) -> Result<DistinguishedName, String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut dn = DistinguishedName::new();
    for rdn in x509.subject().iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err("multi-valued or empty relative distinguished name".into());
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or("attribute OID out of range")?
            .collect();
        let data = attr.attr_value().data;
        let text = std::str::from_utf8(data).map_err(|_| "attribute is not UTF-8".to_owned())?;
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(
                PrintableString::try_from(text).map_err(|e| e.to_string())?,
            ),
            Tag::Ia5String => {
                DnValue::Ia5String(Ia5String::try_from(text).map_err(|e| e.to_string())?)
            }
            Tag::T61String => {
                DnValue::TeletexString(TeletexString::try_from(text).map_err(|e| e.to_string())?)
            }
            tag => return Err(format!("attribute string type {tag} is not supported")),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

/// `CN=<common_name>, O=weir`.
fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    // DER order is most general first; shown (RFC 4514) as `CN=NAME,O=weir`.
    dn.push(DnType::OrganizationName, "weir");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn check_days(d: u32) -> Result<(), CertsError> {
    if (1..=MAX_DAYS).contains(&d) {
        Ok(())
    } else {
        Err(CertsError::BadDays(d))
    }
}

/// A certificate name becomes file names (`NAME.pem`, `NAME-key.pem`) and the subject CN.
fn check_name(name: &str) -> Result<(), CertsError> {
    let bad = |reason| {
        Err(CertsError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 64 {
        return bad("1 to 64 characters");
    }
    if name.starts_with(['.', '-']) {
        return bad("it may not start with `.` or `-`");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return bad("only letters, digits, `.`, `-` and `_` are allowed");
    }
    if name == "ca" {
        return bad("`ca` would collide with the CA's own ca.pem and ca-key.pem");
    }
    Ok(())
}

fn check_dns_name(name: &str) -> Result<(), CertsError> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    let ok = !bare.is_empty()
        && name.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(CertsError::BadDnsName(name.to_owned()))
    }
}

fn refuse_existing(paths: &[&PathBuf], force: bool) -> Result<(), CertsError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        Some(p) => Err(CertsError::Exists((*p).clone())),
        None => Ok(()),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertsError> {
    std::fs::read(path).map_err(|source| CertsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to a temporary file beside `path` (mode 0600 for keys, 0644 otherwise),
/// then renames it over `path`: readers see the old file or the new one, never a part.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 86_400)
}

/// Certificates hold whole seconds.
fn whole_seconds(t: SystemTime) -> SystemTime {
    unix_to_system(
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
    )
}

fn unix_to_system(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn set_validity(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default();
    params.not_before = epoch + since(not_before);
    params.not_after = epoch + since(not_after);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::danger::ClientCertVerifier;
    use x509_parser::pem::parse_x509_pem;

    fn ca_opts(dir: &Path, td: &str) -> CaOptions {
        CaOptions {
            out: dir.to_owned(),
            trust_domain: td.to_owned(),
            days: DEFAULT_CA_DAYS,
            force: false,
        }
    }

    fn issue_opts(ca: &Path, out: &Path, name: &str, id: &str) -> IssueOptions {
        IssueOptions {
            ca: ca.to_owned(),
            out: out.to_owned(),
            name: name.to_owned(),
            spiffe_id: id.to_owned(),
            dns: vec!["front.local".to_owned()],
            days: DEFAULT_LEAF_DAYS,
            force: false,
        }
    }

    fn der(path: &Path) -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap();
        let (rest, pem) = parse_x509_pem(&bytes).unwrap();
        assert!(
            rest.iter().all(u8::is_ascii_whitespace),
            "one PEM block expected"
        );
        assert_eq!(pem.label, "CERTIFICATE");
        pem.contents
    }

    fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
        sans(cert, |gn| match gn {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
    }

    fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
        sans(cert, |gn| match gn {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
    }

    fn sans(
        cert: &X509Certificate<'_>,
        f: impl Fn(&GeneralName<'_>) -> Option<String>,
    ) -> Vec<String> {
        cert.subject_alternative_name()
            .unwrap()
            .map(|s| s.value.general_names.iter().filter_map(f).collect())
            .unwrap_or_default()
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn now_unix() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn ca_is_a_ca_naming_its_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let minted = mint_ca(&ca_opts(dir.path(), "example.org")).unwrap();
        assert_eq!(
            minted.files,
            vec![dir.path().join("ca.pem"), dir.path().join("ca-key.pem")]
        );
        let ca_der = der(&minted.files[0]);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(ca.is_ca());
        let bc = ca.basic_constraints().unwrap().unwrap().value;
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        assert_eq!(uri_sans(&ca), vec!["spiffe://example.org"]);
        assert_eq!(
            ca.subject().to_string(),
            "O=weir, CN=weir development CA (example.org)"
        );
        assert_eq!(ca.subject(), ca.issuer(), "self-signed");
        let v = ca.validity();
        let now = now_unix();
        assert!(
            v.not_before.timestamp() <= now - 60,
            "backdated for clock skew"
        );
        let days = (v.not_after.timestamp() - now) as f64 / 86_400.0;
        assert!((364.9..=365.1).contains(&days), "{days} days");
        assert_eq!(
            v.not_after.timestamp(),
            minted
                .not_after
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
        );
        // ECDSA P-256.
        assert_eq!(
            ca.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let key_pem = std::fs::read_to_string(&minted.files[1]).unwrap();
        let key = KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn leaf_carries_the_spiffe_id_both_ekus_and_a_bounded_validity() {
        let dir = tempfile::tempdir().unwrap();
        mint_ca(&ca_opts(dir.path(), "example.org")).unwrap();
        let mut opts = issue_opts(
            dir.path(),
            &dir.path().join("out"),
            "front",
            "spiffe://example.org/ns/default/sa/front",
        );
        opts.dns.push("Front.Example.org".to_owned());
        let issued = issue(&opts).unwrap();
        assert_eq!(
            issued.files,
            vec![
                dir.path().join("out/front.pem"),
                dir.path().join("out/front-key.pem")
            ]
        );
        assert_eq!(
            issued.spiffe_id.to_string(),
            "spiffe://example.org/ns/default/sa/front"
        );
        assert!(!issued.capped_by_ca);

        let leaf_der = der(&issued.files[0]);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        assert!(!leaf.is_ca());
        assert_eq!(
            uri_sans(&leaf),
            vec!["spiffe://example.org/ns/default/sa/front"]
        );
        assert_eq!(dns_sans(&leaf), vec!["front.local", "front.example.org"]);
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert_eq!(leaf.subject().to_string(), "O=weir, CN=front");
        assert_eq!(
            leaf.issuer().to_string(),
            "O=weir, CN=weir development CA (example.org)"
        );
        let v = leaf.validity();
        let now = now_unix();
        assert!(v.not_before.timestamp() <= now - 60);
        assert!(v.not_before.timestamp() >= now - 10 * 60);
        let days = (v.not_after.timestamp() - now) as f64 / 86_400.0;
        assert!((29.9..=30.1).contains(&days), "{days} days");
        // Two serials from two issuances differ.
        let second = issue(&IssueOptions {
            name: "front2".into(),
            ..opts.clone()
        })
        .unwrap();
        let leaf2_der = der(&second.files[0]);
        let (_, leaf2) = x509_parser::parse_x509_certificate(&leaf2_der).unwrap();
        assert_ne!(leaf.raw_serial(), leaf2.raw_serial());
    }

    #[test]
    fn leaf_expiry_is_capped_by_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        mint_ca(&CaOptions {
            days: 10,
            ..ca_opts(dir.path(), "example.org")
        })
        .unwrap();
        let issued = issue(&issue_opts(
            dir.path(),
            dir.path(),
            "w",
            "spiffe://example.org/w",
        ))
        .unwrap();
        assert!(issued.capped_by_ca);
        let not_after = |path: &Path| {
            let cert_der = der(path);
            let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
            cert.validity().not_after.timestamp()
        };
        assert_eq!(
            not_after(&issued.files[0]),
            not_after(&dir.path().join("ca.pem"))
        );
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let m = mesh(&MeshOptions {
            out: dir.path().join("certs"),
            trust_domain: "example.org".into(),
            force: false,
        })
        .unwrap();
        assert_eq!(m.files().count(), 6);
        for f in m.files() {
            if f.to_string_lossy().ends_with("-key.pem") {
                assert_eq!(mode(f), 0o600, "{}", f.display());
            } else {
                // Certificates are public: readable (umask permitting), never group/world-writable.
                assert_eq!(mode(f) & 0o622, 0o600, "{}", f.display());
            }
        }
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("certs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 6, "{names:?}");
    }

    #[cfg(unix)]
    #[test]
    fn forced_overwrite_of_a_world_readable_key_leaves_it_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca-key.pem");
        std::fs::write(&key, "old").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        mint_ca(&CaOptions {
            force: true,
            ..ca_opts(dir.path(), "example.org")
        })
        .unwrap();
        assert_eq!(mode(&key), 0o600);
    }

    #[test]
    fn overwrite_is_refused_without_force() {
        let dir = tempfile::tempdir().unwrap();
        mint_ca(&ca_opts(dir.path(), "example.org")).unwrap();
        let before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let err = mint_ca(&ca_opts(dir.path(), "example.org")).unwrap_err();
        assert!(matches!(&err, CertsError::Exists(p) if p.ends_with("ca.pem")));
        assert!(err.to_string().contains("ca.pem already exists"), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);

        let opts = issue_opts(dir.path(), dir.path(), "w", "spiffe://example.org/w");
        issue(&opts).unwrap();
        let err = issue(&opts).unwrap_err();
        assert!(matches!(&err, CertsError::Exists(p) if p.ends_with("w.pem")));

        // Only the key left over still counts.
        std::fs::remove_file(dir.path().join("w.pem")).unwrap();
        let err = issue(&opts).unwrap_err();
        assert!(matches!(&err, CertsError::Exists(p) if p.ends_with("w-key.pem")));

        // --force replaces both.
        let old_key = std::fs::read(dir.path().join("w-key.pem")).unwrap();
        issue(&IssueOptions {
            force: true,
            ..opts
        })
        .unwrap();
        assert_ne!(
            std::fs::read(dir.path().join("w-key.pem")).unwrap(),
            old_key
        );
        mint_ca(&CaOptions {
            force: true,
            ..ca_opts(dir.path(), "example.org")
        })
        .unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
    }

    #[test]
    fn mesh_writes_nothing_when_any_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("back-key.pem"), "mine").unwrap();
        let err = mesh(&MeshOptions {
            out: dir.path().to_owned(),
            trust_domain: "example.org".into(),
            force: false,
        })
        .unwrap_err();
        assert!(matches!(&err, CertsError::Exists(p) if p.ends_with("back-key.pem")));
        assert!(!dir.path().join("ca.pem").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("back-key.pem")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn mismatched_trust_domain_is_refused_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        mint_ca(&ca_opts(dir.path(), "example.org")).unwrap();
        let opts = issue_opts(dir.path(), dir.path(), "w", "spiffe://other.org/ns/a/sa/w");
        let err = issue(&opts).unwrap_err();
        assert!(matches!(err, CertsError::TrustDomainMismatch { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("`other.org`") && msg.contains("`example.org`") && msg.contains("--force"),
            "{msg}"
        );
        assert!(!dir.path().join("w.pem").exists());
        let issued = issue(&IssueOptions {
            force: true,
            ..opts
        })
        .unwrap();
        assert_eq!(issued.spiffe_id.trust_domain, "other.org");
    }

    #[test]
    fn bad_spiffe_ids_are_refused() {
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        let cases: &[(&str, &str)] = &[
            ("", "spiffe://"),
            ("http://example.org/a", "spiffe://"),
            ("SPIFFE://example.org/a", "spiffe://"),
            ("spiffe:/example.org/a", "spiffe://"),
            ("spiffe://", "empty"),
            ("spiffe:///a", "empty"),
            ("spiffe://Example.org/a", "lower-case"),
            ("spiffe://exa mple.org/a", "lower-case"),
            ("spiffe://example.org", "path"),
            ("spiffe://example.org/", "path"),
            ("spiffe://example.org/a//b", "empty path segment"),
            ("spiffe://example.org/a/", "empty path segment"),
            ("spiffe://example.org/a/../b", "`..`"),
            ("spiffe://example.org/./a", "`..`"),
            ("spiffe://example.org/..", "`..`"),
            ("spiffe://example.org/a?x=1", "query"),
            ("spiffe://example.org/a#frag", "fragment"),
            ("spiffe://user@example.org/a", "user info"),
            ("spiffe://example.org:8443/a", "port"),
            ("spiffe://example.org/a%20b", "only letters"),
            ("spiffe://example.org/a b", "only letters"),
            ("spiffe://example.org/caf\u{e9}", "only letters"),
            (&long, "2048"),
        ];
        for (id, want) in cases {
            let err = parse_spiffe_id(id).expect_err(id);
            assert!(matches!(err, CertsError::BadSpiffeId { .. }), "{id}");
            let msg = err.to_string();
            assert!(msg.contains(want), "{id}: {msg} (wanted `{want}`)");
        }
        let ok = [
            (
                "spiffe://example.org/ns/default/sa/front",
                "example.org",
                "/ns/default/sa/front",
            ),
            ("spiffe://a-b_c.d9/X.y-z_W", "a-b_c.d9", "/X.y-z_W"),
            ("spiffe://td/a...b", "td", "/a...b"),
        ];
        for (id, td, path) in ok {
            let parsed = parse_spiffe_id(id).unwrap();
            assert_eq!(
                parsed,
                SpiffeId {
                    trust_domain: td.into(),
                    path: path.into()
                }
            );
            assert_eq!(parsed.to_string(), id);
        }
        let max = format!("spiffe://example.org/{}", "a".repeat(2048 - 21));
        assert_eq!(max.len(), 2048);
        parse_spiffe_id(&max).unwrap();
    }

    #[test]
    fn bad_inputs_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        for td in ["", "Example.org", "example.org/x", "a:1"] {
            let err = mint_ca(&ca_opts(dir.path(), td)).unwrap_err();
            assert!(
                matches!(err, CertsError::BadTrustDomain { .. }),
                "{td}: {err}"
            );
        }
        assert!(matches!(
            mint_ca(&CaOptions {
                days: 0,
                ..ca_opts(dir.path(), "example.org")
            }),
            Err(CertsError::BadDays(0))
        ));
        mint_ca(&ca_opts(dir.path(), "example.org")).unwrap();
        let id = "spiffe://example.org/w";
        for name in ["", "ca", "../w", "a/b", ".hidden", "-x", "a b"] {
            let err = issue(&issue_opts(dir.path(), dir.path(), name, id)).unwrap_err();
            assert!(matches!(err, CertsError::BadName { .. }), "{name}: {err}");
        }
        for dns in ["", "a..b", "-a.b", "a_b.c", "*", "a.*.b", "x y"] {
            let mut opts = issue_opts(dir.path(), dir.path(), "w", id);
            opts.dns = vec![dns.to_owned()];
            let err = issue(&opts).unwrap_err();
            assert!(matches!(err, CertsError::BadDnsName(_)), "{dns}: {err}");
        }
        let mut opts = issue_opts(dir.path(), dir.path(), "w", id);
        opts.dns = vec!["*.svc.local".to_owned()];
        issue(&opts).unwrap();
    }

    #[test]
    fn a_broken_or_missing_ca_is_reported_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let id = "spiffe://example.org/w";
        let out = dir.path().join("out");
        let err = issue(&issue_opts(dir.path(), &out, "w", id)).unwrap_err();
        assert!(
            matches!(&err, CertsError::Read { path, .. } if path.ends_with("ca.pem")),
            "{err}"
        );

        // A workload certificate is not a CA.
        mint_ca(&ca_opts(dir.path(), "example.org")).unwrap();
        issue(&issue_opts(dir.path(), dir.path(), "w", id)).unwrap();
        let not_ca = dir.path().join("notca");
        std::fs::create_dir(&not_ca).unwrap();
        std::fs::copy(dir.path().join("w.pem"), not_ca.join("ca.pem")).unwrap();
        std::fs::copy(dir.path().join("w-key.pem"), not_ca.join("ca-key.pem")).unwrap();
        let err = issue(&issue_opts(&not_ca, &out, "w", id)).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");

        // A key that is not the CA's.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::copy(dir.path().join("ca.pem"), other.join("ca.pem")).unwrap();
        std::fs::copy(dir.path().join("w-key.pem"), other.join("ca-key.pem")).unwrap();
        let err = issue(&issue_opts(&other, &out, "w", id)).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not belong to the certificate"),
            "{err}"
        );

        // --ca pointing at the file instead of its folder.
        let err = issue(&issue_opts(&dir.path().join("ca.pem"), &out, "w", id)).unwrap_err();
        assert!(err.to_string().contains("folder"), "{err}");
        assert!(!out.exists());
    }

    fn client_verifier(ca_der: Vec<u8>) -> Arc<dyn ClientCertVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca_der)).unwrap();
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    fn server_verifier(ca_der: Vec<u8>) -> Arc<dyn ServerCertVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca_der)).unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn rustls_accepts_mesh_leaves_as_clients_and_servers_and_refuses_another_cas() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let opts = |out: &Path| MeshOptions {
            out: out.to_owned(),
            trust_domain: "example.org".into(),
            force: false,
        };
        mesh(&opts(&a)).unwrap();
        mesh(&opts(&b)).unwrap();
        let clients = client_verifier(der(&a.join("ca.pem")));
        let servers = server_verifier(der(&a.join("ca.pem")));
        let now = UnixTime::now();
        for name in ["front", "back"] {
            let leaf = CertificateDer::from(der(&a.join(format!("{name}.pem"))));
            clients
                .verify_client_cert(&leaf, &[], now)
                .unwrap_or_else(|e| panic!("{name} as a client: {e}"));
            let host = ServerName::try_from(format!("{name}.local")).unwrap();
            servers
                .verify_server_cert(&leaf, &[], &host, &[], now)
                .unwrap_or_else(|e| panic!("{name} as a server: {e}"));
            // Same names, another CA: refused both ways.
            let stranger = CertificateDer::from(der(&b.join(format!("{name}.pem"))));
            assert!(clients.verify_client_cert(&stranger, &[], now).is_err());
            assert!(
                servers
                    .verify_server_cert(&stranger, &[], &host, &[], now)
                    .is_err()
            );
        }
        // A leaf is not valid for a DNS name it does not carry.
        let leaf = CertificateDer::from(der(&a.join("front.pem")));
        let wrong = ServerName::try_from("back.local").unwrap();
        assert!(
            servers
                .verify_server_cert(&leaf, &[], &wrong, &[], now)
                .is_err()
        );
    }

    #[test]
    fn rustls_accepts_a_leaf_issued_later_from_the_files() {
        // `issue` reads the CA back from disk; its leaves chain to the CA as written.
        let dir = tempfile::tempdir().unwrap();
        mint_ca(&ca_opts(dir.path(), "example.org")).unwrap();
        let issued = issue(&issue_opts(
            dir.path(),
            dir.path(),
            "w",
            "spiffe://example.org/w",
        ))
        .unwrap();
        let leaf = CertificateDer::from(der(&issued.files[0]));
        client_verifier(der(&dir.path().join("ca.pem")))
            .verify_client_cert(&leaf, &[], UnixTime::now())
            .unwrap();
        // And the key matches the certificate (what a TLS server config checks).
        let key_pem = std::fs::read_to_string(&issued.files[1]).unwrap();
        let key = KeyPair::from_pem(&key_pem).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(
            x509.public_key().subject_public_key.data.as_ref(),
            key.der_bytes()
        );
    }

    #[test]
    fn next_steps_name_the_example_manifests_when_next_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        assert!(mesh_next_steps(&certs)[1].contains("examples/mesh"));
        std::fs::write(dir.path().join("front.yaml"), "").unwrap();
        std::fs::write(dir.path().join("back.yaml"), "").unwrap();
        let steps = mesh_next_steps(&certs);
        assert!(steps[0].contains(&*dir.path().join("back.yaml").to_string_lossy()));
        assert!(steps[1].contains(&*dir.path().join("front.yaml").to_string_lossy()));
        assert!(steps[2].starts_with("curl"));
    }
}
