//! `sitelinkd`: runs one sitelink interface in the foreground.
//!
//! Start-up order: load and validate the config (nothing is touched if it is wrong), create
//! the TUN device, configure it over netlink (MTU, addresses, up, routes), bind the UDP and
//! control sockets, then start the packet loop. SIGTERM/SIGINT stop the loop, remove the
//! routes we added and the interface, and exit 0.

mod control;
mod dataplane;
mod netlink;
mod udp;

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::Parser;
use sitelink_config::{Config, Endpoint, InterfaceName};
use sitelink_engine::{Engine, Instant, PeerId, PeerSpec};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// sitelink daemon: a WireGuard-compatible site-to-site tunnel.
#[derive(Debug, Parser)]
#[command(name = "sitelinkd", version, about)]
struct Args {
    /// Configuration file (TOML); see the README's configuration reference.
    #[arg(short, long, env = "SITELINK_CONFIG", value_name = "PATH")]
    config: PathBuf,
    /// More logging: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable chain, never a backtrace: "what: why: why".
            eprintln!("sitelinkd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info,boringtun=off",
        1 => "debug,boringtun=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .init();
}

fn run(args: &Args) -> Result<()> {
    let config = Config::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<()> {
    let iface = &config.interface;
    let name = iface.name.clone();
    let tun = create_tun(&name)?;
    let index = tun
        .if_index()
        .with_context(|| format!("cannot read the index of interface {name}"))?;

    let mut nl = netlink::Netlink::open(index)?;
    let setup = async {
        nl.configure_link(iface.mtu, &iface.addresses)
            .await
            .with_context(|| format!("cannot configure interface {name}"))?;
        for peer in &config.peers {
            for cidr in &peer.allowed_ips {
                nl.add_route(*cidr)
                    .await
                    .with_context(|| format!("peer {:?}", peer.name))?;
            }
        }
        anyhow::Ok(())
    };
    if let Err(e) = setup.await {
        nl.teardown().await;
        return Err(e);
    }

    let result = run_interface(&config, tun).await;
    nl.teardown().await;
    result
}

/// Everything after the interface exists: sockets, engine, packet loop, signals.
async fn run_interface(config: &Config, tun: tun_rs::SyncDevice) -> Result<()> {
    let iface = &config.interface;
    let udp = udp::Udp::bind(iface.listen_port.unwrap_or(0))?;
    let listen_port = udp.local_port()?;

    let mut engine = Engine::new(&iface.private_key, Instant::now(), SystemTime::now());
    let mut to_resolve = Vec::new();
    for peer in &config.peers {
        let id = engine
            .add_peer(PeerSpec {
                name: peer.name.clone(),
                public_key: peer.public_key,
                preshared_key: peer.preshared_key.clone(),
                endpoint: peer.endpoint.as_ref().and_then(Endpoint::ip),
                allowed_ips: peer.allowed_ips.clone(),
                persistent_keepalive: peer.persistent_keepalive,
            })
            .with_context(|| format!("{}", config.path.display()))?;
        if let Some(ep) = peer.endpoint.as_ref().filter(|e| e.ip().is_none()) {
            to_resolve.push((id, peer.name.clone(), ep.clone()));
        }
    }
    let public_key = engine.public_key();
    let engine = Arc::new(Mutex::new(engine));

    let socket_path = sitelink_config::control_socket_path(&iface.name);
    let listener = control::bind(&socket_path)?;
    let shared = Arc::new(control::Shared {
        engine: Arc::clone(&engine),
        name: iface.name.to_string(),
        listen_port,
        addresses: iface.addresses.iter().map(|c| c.to_string()).collect(),
        mtu: iface.mtu,
    });
    tokio::spawn(control::serve(listener, shared));
    for (id, peer, endpoint) in to_resolve {
        tokio::spawn(resolve_endpoint(Arc::clone(&engine), id, peer, endpoint));
    }

    let (wake_tx, wake_rx) =
        UnixDatagram::pair().context("cannot create the wake-up socket pair")?;
    let stop = Arc::new(AtomicBool::new(false));
    let plane = dataplane::DataPlane {
        tun,
        udp,
        engine,
        wake: wake_rx,
        stop: Arc::clone(&stop),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("sitelink-packets".into())
        .spawn(move || {
            let result = plane.run();
            let _ = done_tx.send(());
            result
        })
        .context("cannot start the packet thread")?;

    tracing::info!(interface = %iface.name, public_key = %public_key, listen_port,
        peers = config.peers.len(), control = %socket_path.display(), "sitelinkd running");

    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = done_rx => tracing::error!("packet loop stopped"),
    }
    stop.store(true, Ordering::Relaxed);
    let _ = wake_tx.send(b"x");
    let loop_result = thread
        .join()
        .map_err(|_| anyhow::anyhow!("the packet thread panicked"))?;
    control::remove(&socket_path);
    loop_result.context("packet loop failed")
}

/// Creates the TUN device with offload (TSO/GSO, checked by tun-rs; plain reads if the
/// kernel refuses) and a 1000-packet queue. Errors say which privilege or device is missing.
fn create_tun(name: &InterfaceName) -> Result<tun_rs::SyncDevice> {
    let built = tun_rs::DeviceBuilder::new()
        .name(name.as_str())
        .with(|b| {
            b.offload(true);
            b.tx_queue_len(1000);
        })
        .build_sync();
    built.map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "sitelinkd needs CAP_NET_ADMIN to create a TUN interface: run it as root (or under the systemd unit)"
            }
            Some(libc::ENOENT) | Some(libc::ENODEV) => {
                "/dev/net/tun is missing: load the tun module (modprobe tun)"
            }
            Some(libc::EBUSY) => "the interface is in use: is another sitelinkd or WireGuard running with this name?",
            Some(libc::EINVAL) => "an interface with this name exists and is not a TUN device: pick another `name`",
            _ => "",
        };
        let what = format!("cannot create TUN interface {name}");
        if hint.is_empty() {
            anyhow::Error::new(e).context(what)
        } else {
            anyhow::Error::new(e).context(format!("{what} ({hint})"))
        }
    })
}

/// Resolves a host-name endpoint, retrying with backoff until it succeeds. A name that
/// does not resolve at boot (DNS not ready yet) is a warning, not a failure.
async fn resolve_endpoint(
    engine: Arc<Mutex<Engine>>,
    id: PeerId,
    peer: String,
    endpoint: Endpoint,
) {
    let mut delay = Duration::from_secs(1);
    loop {
        let ep = endpoint.clone();
        let result = tokio::task::spawn_blocking(move || ep.resolve()).await;
        match result {
            Ok(Ok(addrs)) if !addrs.is_empty() => {
                let addr = addrs[0];
                tracing::info!(peer, %endpoint, %addr, "resolved endpoint");
                engine
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_endpoint(id, addr);
                return;
            }
            Ok(Ok(_)) => {
                tracing::warn!(peer, %endpoint, retry_in = ?delay, "endpoint resolved to no addresses")
            }
            Ok(Err(e)) => {
                tracing::warn!(peer, %endpoint, error = %e, retry_in = ?delay, "cannot resolve endpoint")
            }
            Err(e) => tracing::warn!(peer, %endpoint, error = %e, "resolver task failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}
