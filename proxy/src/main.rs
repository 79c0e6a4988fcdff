//! The `weir` command line: `run` the proxy, `check` a manifest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: measured faster than glibc malloc on the request path (see benches/HISTORY.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Weir: a WebAssembly-extensible programmable proxy for service meshes.
#[derive(Parser)]
#[command(name = "weir", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (with no --config: the embedded default, a demo on 127.0.0.1:8080).
    Run {
        /// Manifest file (YAML).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Worker threads (overrides the manifest's `workers:`; default: available cores).
        #[arg(long)]
        workers: Option<usize>,
        /// Log level or filter (e.g. `info`, `debug`, `weir=debug`); RUST_LOG also works.
        #[arg(long, default_value = "info")]
        log_level: String,
        /// Reload (through the same transaction as `POST /reload`) whenever the manifest file
        /// changes, including a Kubernetes ConfigMap's atomic symlink swap.
        #[arg(long, requires = "config")]
        watch: bool,
    },
    /// Validate a manifest offline; prints every error with its field path.
    Check {
        /// Manifest file (YAML).
        file: PathBuf,
    },
    /// Print the embedded default manifest.
    DefaultConfig,
    /// Talk to a running weir's admin endpoint (reads, reloads, filter and chain swaps).
    Admin {
        /// The admin endpoint.
        #[arg(long, default_value = "127.0.0.1:9901")]
        addr: std::net::SocketAddr,
        /// File with the bearer token for mutations (default: $WEIR_ADMIN_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Start a new filter crate from the SDK's template (its `cargo test` builds and runs it).
    NewFilter {
        /// Crate name (lower-case letters, digits and `-`).
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The weir-sdk to depend on (default: the checkout this weir was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Development PKI: a CA and SPIFFE workload certificates for mTLS between weir instances.
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// GET a read endpoint: /filters, /config_dump, /clusters, /metrics, /ready, /healthz.
    Get { path: String },
    /// Re-read the manifest file and publish it.
    Reload {
        /// Validate, compile and canary only; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Go back to the previous generation.
    Rollback,
    /// Replace (or add) a filter's module with a .wasm file.
    PutFilter {
        name: String,
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// Change a filter's module reference and/or configuration.
    SetFilter {
        name: String,
        /// `builtin:NAME` or `sha256:HEX` (a module uploaded earlier).
        #[arg(long)]
        module: Option<String>,
        /// The filter's configuration (JSON).
        #[arg(long)]
        config: Option<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Set a chain's filters, in order.
    PutChain {
        name: String,
        #[arg(required = true)]
        filters: Vec<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Replace a cluster's endpoints (PUT /clusters/NAME/endpoints). Each endpoint is
    /// `IP:PORT` optionally followed by `,weight=N`, `,priority=N`, `,zone=Z` and
    /// `,health=healthy|draining|unhealthy`; no endpoint at all empties the cluster.
    SetEndpoints {
        cluster: String,
        #[arg(value_name = "ENDPOINT")]
        endpoints: Vec<String>,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum CertsAction {
    /// Mint a development CA: DIR/ca.pem and DIR/ca-key.pem (mode 0600).
    Ca {
        /// Folder to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// SPIFFE trust domain the CA names (URI SAN spiffe://TD).
        #[arg(long, value_name = "TD", default_value = weir::cli::certs::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Lifetime in days.
        #[arg(long, default_value_t = weir::cli::certs::DEFAULT_CA_DAYS)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate (server and client auth) signed by a CA from `certs ca`.
    Issue {
        /// Folder holding ca.pem and ca-key.pem.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Folder to write NAME.pem and NAME-key.pem to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// File name stem and subject CN.
        #[arg(long)]
        name: String,
        /// The workload's SPIFFE ID (URI SAN), e.g. spiffe://example.org/ns/default/sa/web.
        #[arg(long, value_name = "ID")]
        spiffe_id: String,
        /// A DNS name to add as a SAN (repeatable).
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// Lifetime in days (never past the CA's expiry).
        #[arg(long, default_value_t = weir::cli::certs::DEFAULT_LEAF_DAYS)]
        days: u32,
        /// Overwrite existing files; issue even if the trust domain differs from the CA's.
        #[arg(long)]
        force: bool,
    },
    /// One shot for examples/mesh: a CA plus workloads `front` and `back`.
    Mesh {
        /// Folder to write to (created if missing), e.g. examples/mesh/certs.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// SPIFFE trust domain.
        #[arg(long, value_name = "TD", default_value = weir::cli::certs::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

fn certs(action: CertsAction) -> ExitCode {
    use weir::cli::certs::{self, CaOptions, IssueOptions, Issued, MeshOptions};
    let expiry = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let print_issued = |w: &Issued| {
        println!("spiffe id: {}", w.spiffe_id);
        if !w.dns.is_empty() {
            println!("dns: {}", w.dns.join(", "));
        }
        let note = if w.capped_by_ca {
            " (capped at the CA's expiry)"
        } else {
            ""
        };
        println!("expires: {}{note}", expiry(w.not_after));
    };
    let result = match action {
        CertsAction::Ca {
            out,
            trust_domain,
            days,
            force,
        } => certs::mint_ca(&CaOptions {
            out,
            trust_domain,
            days,
            force,
        })
        .map(|ca| {
            ca.files.iter().for_each(|f| println!("{}", f.display()));
            println!("trust domain: {}", ca.trust_domain);
            println!("expires: {}", expiry(ca.not_after));
        }),
        CertsAction::Issue {
            ca,
            out,
            name,
            spiffe_id,
            dns,
            days,
            force,
        } => certs::issue(&IssueOptions {
            ca,
            out,
            name,
            spiffe_id,
            dns,
            days,
            force,
        })
        .map(|w| {
            w.files.iter().for_each(|f| println!("{}", f.display()));
            print_issued(&w);
        }),
        CertsAction::Mesh {
            out,
            trust_domain,
            force,
        } => certs::mesh(&MeshOptions {
            out: out.clone(),
            trust_domain,
            force,
        })
        .map(|m| {
            m.files().for_each(|f| println!("{}", f.display()));
            println!(
                "trust domain: {} (CA expires {})",
                m.ca.trust_domain,
                expiry(m.ca.not_after)
            );
            for w in &m.workloads {
                let dns = w.dns.join(", ");
                println!(
                    "{}: {} (dns {dns}), expires {}",
                    w.name,
                    w.spiffe_id,
                    expiry(w.not_after)
                );
            }
            println!("next:");
            for step in certs::mesh_next_steps(&out) {
                println!("  {step}");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn admin(addr: std::net::SocketAddr, token_file: Option<&Path>, action: AdminAction) -> ExitCode {
    use weir::cli::admin_client::{AdminClient, with_dry_run};
    let client = match AdminClient::new(addr, token_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = Some("application/json");
    let result = match action {
        AdminAction::Get { path } => client.call("GET", &path, None, b""),
        AdminAction::Reload { dry_run } => {
            client.call("POST", &with_dry_run("/reload", dry_run), None, b"")
        }
        AdminAction::Rollback => client.call("POST", "/rollback", None, b""),
        AdminAction::PutFilter {
            name,
            file,
            dry_run,
        } => match std::fs::read(&file) {
            Ok(bytes) => client.call(
                "PUT",
                &with_dry_run(&format!("/filters/{name}"), dry_run),
                Some("application/wasm"),
                &bytes,
            ),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        },
        AdminAction::SetFilter {
            name,
            module,
            config,
            dry_run,
        } => {
            let mut patch = serde_json::Map::new();
            if let Some(m) = module {
                patch.insert("module".into(), m.into());
            }
            if let Some(c) = config {
                match serde_json::from_str::<serde_json::Value>(&c) {
                    Ok(v) => {
                        patch.insert("config".into(), v);
                    }
                    Err(e) => {
                        eprintln!("error: --config is not JSON: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            let body = serde_json::Value::Object(patch).to_string();
            client.call(
                "PUT",
                &with_dry_run(&format!("/filters/{name}"), dry_run),
                json,
                body.as_bytes(),
            )
        }
        AdminAction::SetEndpoints {
            cluster,
            endpoints,
            dry_run,
        } => {
            let body = match weir::cli::admin_client::endpoints_body(&endpoints) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            client.call(
                "PUT",
                &with_dry_run(&format!("/clusters/{cluster}/endpoints"), dry_run),
                json,
                body.as_bytes(),
            )
        }
        AdminAction::PutChain {
            name,
            filters,
            dry_run,
        } => {
            let body = serde_json::to_string(&filters).unwrap_or_default();
            client.call(
                "PUT",
                &with_dry_run(&format!("/chains/{name}"), dry_run),
                json,
                body.as_bytes(),
            )
        }
    };
    match result {
        Ok(a) => {
            let out = String::from_utf8_lossy(&a.body);
            if a.status < 400 {
                print!("{out}");
                ExitCode::SUCCESS
            } else {
                eprint!("error: HTTP {}: {out}", a.status);
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => match weir::config::load_file(&file) {
            // The TLS material is loaded and every filter compiled and started once (its
            // on_configure sees its config) too: a certificate that does not match its key or
            // a filter that refuses its configuration is caught here, not at start-up.
            Ok(cfg) => {
                if let Err(e) = weir::tls::TlsContexts::check(&cfg) {
                    eprintln!("error: TLS: {e}");
                    return ExitCode::FAILURE;
                }
                let loaded = weir::filter::FilterSet::runtime()
                    .and_then(|rt| weir::filter::FilterSet::load(&cfg, &rt, &Default::default()));
                match loaded {
                    Ok(_) => {
                        println!("ok");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                for err in &e.errors {
                    eprintln!("error: {err}");
                }
                ExitCode::FAILURE
            }
        },
        Command::NewFilter { name, dir, sdk } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = sdk.unwrap_or_else(weir::cli::scaffold::default_sdk_path);
            let sdk = sdk.canonicalize().unwrap_or(sdk);
            match weir::cli::scaffold::new_filter(&name, &dir, &sdk) {
                Ok(()) => {
                    println!(
                        "created {} (depends on weir-sdk at {})",
                        dir.display(),
                        sdk.display()
                    );
                    println!("next: cd {} && cargo test", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Admin {
            addr,
            token_file,
            action,
        } => admin(addr, token_file.as_deref(), action),
        Command::Certs { action } => certs(action),
        Command::DefaultConfig => {
            print!("{}", weir::config::EMBEDDED_DEFAULT);
            ExitCode::SUCCESS
        }
        Command::Run {
            config,
            workers,
            log_level,
            watch,
        } => {
            init_logging(&log_level);
            if workers == Some(0) {
                eprintln!("error: --workers must be at least 1");
                return ExitCode::FAILURE;
            }
            // Absolute, not canonical: relative paths in the manifest resolve the same way at
            // start-up and on every reload, and a watched symlink is followed afresh each time.
            let config = config.map(|p| std::path::absolute(&p).unwrap_or(p));
            let loaded = config.map(|path| {
                let (digest, cfg) = weir::config::read_manifest(&path)?;
                Ok::<_, weir::config::ConfigError>((
                    cfg?,
                    weir::config::ManifestFile { path, digest },
                ))
            });
            let (cfg, manifest) = match loaded {
                Some(Ok((c, m))) => (c, Some(m)),
                Some(Err(e)) => {
                    for err in &e.errors {
                        eprintln!("error: {err}");
                    }
                    return ExitCode::FAILURE;
                }
                None => (weir::config::embedded_default(), None),
            };
            let opts = weir::app::RunOptions {
                workers,
                manifest,
                watch,
            };
            match weir::app::run(cfg, opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {:#}", anyhow::Error::from(e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs to stderr; the admin endpoint's `/logging` can change the filter while Weir runs.
fn init_logging(level: &str) {
    weir::telemetry::logs::init(level);
}
