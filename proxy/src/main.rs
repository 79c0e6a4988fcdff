//! The `weir` command line: `run` the proxy, `check` a manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: measured faster than glibc malloc on the request path (see benches/README.md).
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => match weir::config::load_file(&file) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
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
            let sdk = sdk.unwrap_or_else(weir::scaffold::default_sdk_path);
            let sdk = sdk.canonicalize().unwrap_or(sdk);
            match weir::scaffold::new_filter(&name, &dir, &sdk) {
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
            let cfg = match &config {
                Some(path) => match weir::config::load_file(path) {
                    Ok(c) => c,
                    Err(e) => {
                        for err in &e.errors {
                            eprintln!("error: {err}");
                        }
                        return ExitCode::FAILURE;
                    }
                },
                None => weir::config::embedded_default(),
            };
            let opts = weir::app::RunOptions {
                workers,
                // Absolute, not canonical: a watched symlink must be followed afresh each time.
                manifest: config.map(|p| std::path::absolute(&p).unwrap_or(p)),
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

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
