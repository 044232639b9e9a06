//! The command line of `sitelinkctl`, in a library so that packaging can generate the man
//! page and shell completions from the same definition.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sitelink_config::{Cidr, Endpoint, InterfaceName, PublicKey};

/// Control a running sitelinkd and manage keys.
#[derive(Debug, Parser)]
#[command(name = "sitelinkctl", version, about)]
pub struct Args {
    /// Interface to talk to (default: the only one running).
    #[arg(
        short,
        long,
        global = true,
        env = "SITELINK_INTERFACE",
        value_name = "NAME"
    )]
    pub interface: Option<InterfaceName>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a new private key (base64) to stdout.
    Genkey,
    /// Read a private key from stdin, print its public key.
    Pubkey,
    /// Print a new preshared key (base64) to stdout.
    Genpsk,
    /// Show the interface and its peers.
    Show {
        /// Machine-readable output (the schema is documented in the README).
        #[arg(long)]
        json: bool,
    },
    /// Add, change or remove peers of the running daemon (effective at once).
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Re-read the config file and apply the difference (like SIGHUP, but waits and reports).
    Reload,
    /// Write the running peer set back to the config file, keeping comments.
    Save,
    /// Print peer events as they happen (handshakes, endpoint changes, peer up/down, routes
    /// withdrawn and restored), one per line, until interrupted.
    Events {
        /// One JSON object per line (the schema is documented in the README).
        #[arg(long)]
        json: bool,
    },
    /// Check why a link is not up: daemon, config, forwarding, routes, each peer's handshakes,
    /// path MTU. One line per check; exit status 1 if any is a problem.
    Doctor {
        /// Check only this peer (name or public key).
        peer: Option<String>,
        /// Machine-readable output: a JSON array of checks.
        #[arg(long)]
        json: bool,
    },
    /// Print the sitelink TOML equivalent of a wg-quick file (e.g. /etc/wireguard/wg0.conf);
    /// settings without an equivalent are listed on stderr with what to do instead.
    Import {
        /// The wg-quick file.
        file: PathBuf,
        /// Interface name (default: the file's stem, e.g. wg0).
        #[arg(long, value_name = "NAME")]
        name: Option<InterfaceName>,
        /// Write the private and preshared keys to files (mode 0600) in DIR and refer to
        /// them, instead of putting them inline in the output.
        #[arg(long, value_name = "DIR")]
        key_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Add a peer.
    Add {
        /// A unique name for logs and status.
        name: String,
        /// The peer's public key (`sitelinkctl pubkey` output on the other site).
        #[arg(long, value_name = "BASE64")]
        public_key: PublicKey,
        /// Comma-separated prefixes routed to the peer.
        #[arg(
            long,
            value_name = "CIDR[,CIDR]",
            value_delimiter = ',',
            required = true
        )]
        allowed_ips: Vec<Cidr>,
        /// Where to reach the peer: IP:PORT, [IPv6]:PORT or NAME:PORT (omit if it connects to us).
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Option<Endpoint>,
        /// Send a keepalive every SECONDS when idle (1-65535); makes the link always-on.
        #[arg(long, value_name = "SECONDS")]
        persistent_keepalive: Option<u16>,
        /// File holding a preshared key (`sitelinkctl genpsk`), mode 0600.
        #[arg(long, value_name = "FILE")]
        preshared_key_file: Option<PathBuf>,
        /// Also write the change to the config file.
        #[arg(long)]
        save: bool,
    },
    /// Change a peer. The session is kept unless its keys change.
    Set {
        /// The peer's name.
        name: String,
        /// Give the peer a new name (its session is kept).
        #[arg(long, value_name = "NAME")]
        rename: Option<String>,
        /// A new public key for the peer (the session is renegotiated).
        #[arg(long, value_name = "BASE64")]
        public_key: Option<PublicKey>,
        /// Replace the peer's allowed-ips (comma-separated prefixes).
        #[arg(long, value_name = "CIDR[,CIDR]", value_delimiter = ',')]
        allowed_ips: Option<Vec<Cidr>>,
        /// Where to reach the peer: IP:PORT, [IPv6]:PORT or NAME:PORT (omit if it connects to us).
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "no_endpoint")]
        endpoint: Option<Endpoint>,
        /// Forget the configured endpoint (the peer must contact us).
        #[arg(long)]
        no_endpoint: bool,
        /// Send a keepalive every SECONDS when idle (1-65535); makes the link always-on.
        #[arg(
            long,
            value_name = "SECONDS",
            conflicts_with = "no_persistent_keepalive"
        )]
        persistent_keepalive: Option<u16>,
        /// Turn persistent keepalives off.
        #[arg(long)]
        no_persistent_keepalive: bool,
        /// File holding a preshared key (`sitelinkctl genpsk`), mode 0600.
        #[arg(long, value_name = "FILE", conflicts_with = "no_preshared_key")]
        preshared_key_file: Option<PathBuf>,
        /// Stop using a preshared key (the session is renegotiated).
        #[arg(long)]
        no_preshared_key: bool,
        /// Also write the change to the config file.
        #[arg(long)]
        save: bool,
    },
    /// Remove a peer (by name or public key); its routes go with it.
    Remove {
        /// The peer's name or base64 public key.
        name_or_key: String,
        /// Also write the change to the config file.
        #[arg(long)]
        save: bool,
    },
}
