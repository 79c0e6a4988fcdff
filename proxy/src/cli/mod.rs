//! The `weir` subcommands beside the data plane: `certs` (a development PKI for mTLS between
//! weir instances), `new-filter` (a filter crate from the SDK's template) and `admin` (a client
//! for a running weir's admin endpoint). `main.rs` parses the command line and calls these;
//! nothing on the request path depends on them.

pub mod admin_client;
pub mod certs;
pub mod scaffold;
