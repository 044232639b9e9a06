//! The command line of `sitelinkd`, in a library so that packaging can generate the man page
//! and shell completions from the same definition.

use std::path::PathBuf;

use clap::Parser;

/// sitelink daemon: a WireGuard-compatible site-to-site tunnel.
#[derive(Debug, Parser)]
#[command(name = "sitelinkd", version, about)]
pub struct Args {
    /// Configuration file (TOML); see the README's configuration reference.
    #[arg(short, long, env = "SITELINK_CONFIG", value_name = "PATH")]
    pub config: PathBuf,
    /// More logging: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}
