//! `sitelinkd`: runs one sitelink interface in the foreground.
//!
//! Start-up order: load and validate the config (nothing is touched if it is wrong), create
//! the TUN device, configure it over netlink (MTU, addresses, up, routes), bind the UDP and
//! control sockets, then start the packet loop. SIGTERM/SIGINT stop the loop, remove the
//! routes we added and the interface, and exit 0.

// Tests may unwrap: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod access;
mod batch;
mod control;
mod dataplane;
mod dns;
mod events;
mod ha;
mod handshakes;
mod hooks;
mod metrics;
mod mss;
mod netlink;
mod persist;
mod privilege;
mod routes;
mod sockopt;
mod state;
mod systemd;
mod uapi_server;
mod udp;

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::process::ExitCode;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::Parser;
use sitelink_config::{Config, InterfaceName};
use sitelink_engine::{Engine, Instant};
use sitelinkd::cli::Args;

use crate::access::Access;
use crate::state::State;
use tokio::signal::unix::{signal, SignalKind};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

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
    let registry = tracing_subscriber::registry().with(filter);
    // Under systemd with stderr going to the journal, log natively: fields such as PEER and
    // INTERFACE become journal fields (`journalctl PEER=site-b`).
    if systemd::stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            registry.with(journald).init();
            return;
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(io::stderr)
                // Colour codes only for a terminal: a file, a pipe or a log collector gets
                // plain lines.
                .with_ansi(io::IsTerminal::is_terminal(&io::stderr())),
        )
        .init();
}

fn run(args: &Args) -> Result<()> {
    privilege::forbid_core_dumps();
    let config = systemd::load_config(&args.config, None)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let span = tracing::info_span!("sitelinkd", interface = %config.interface.name);
    runtime.block_on(serve(config).instrument(span))
}

async fn serve(config: Config) -> Result<()> {
    let iface = &config.interface;
    let access = Arc::new(Access::new(iface.control_group.as_deref())?);
    let threads = packet_threads(iface.threads);
    let tun_queues = create_tun(&iface.name, threads)?;
    let index = tun_queues[0]
        .if_index()
        .with_context(|| format!("cannot read the index of interface {}", iface.name))?;
    // The UDP port first: if it is taken, nothing has been configured yet. Its fwmark is
    // set with the rest of the configuration.
    let group = udp::Udp::bind_group(iface.listen_port.unwrap_or(0), None, threads)?;
    let listen_port = group[0].local_port()?;
    let mut engine = Engine::new(
        iface.private_key.as_ref(),
        Instant::now(),
        SystemTime::now(),
    );
    if iface.ha_address.is_some() {
        // One of an HA pair: standby until the virtual address is seen here (`ha.rs`).
        engine.set_active(false, None);
    }
    let engine = Arc::new(Mutex::new(engine));
    let netlink = netlink::Netlink::open(index, iface.name.as_str(), iface.route_protocol)?;
    let (plane, ends, stop) = dataplane::Handle::new(threads)
        .context("cannot create the packet loops' wake-up sockets")?;
    let wakers = plane
        .wakers()
        .context("cannot create the packet loops' wake-up sockets")?;
    let queue = Arc::new(handshakes::Queue::default());
    let mss_clamp = Arc::clone(&plane.mss_clamp);
    let sockets = group
        .iter()
        .map(udp::Udp::control_handle)
        .collect::<Result<Vec<_>>>()?;
    let state = State::start(
        config,
        Arc::clone(&engine),
        netlink,
        sockets,
        listen_port,
        plane,
        Arc::clone(&queue),
    )
    .await?;
    // Events the engine queues from here on wake the event task (and one wake-up now for
    // anything queued while the configuration was applied).
    let waker = state.events.waker();
    waker();
    dataplane::lock(&engine).set_event_waker(waker);
    let state = Arc::new(tokio::sync::Mutex::new(state));
    let group: Vec<Arc<udp::Udp>> = group.into_iter().map(Arc::new).collect();
    let socket_slot = Arc::new(Mutex::new(Arc::clone(&group[0])));
    let queues = tun_queues
        .into_iter()
        .zip(group)
        .zip(ends)
        .map(|((tun, udp), ends)| dataplane::Queue { tun, udp, ends })
        .collect();
    let plane = dataplane::DataPlane {
        queues,
        socket_slot,
        handshakes: queue,
        engine,
        wakers,
        stop,
        watchdog: systemd::watchdog_interval(),
        mss_clamp,
    };
    let result = run_interface(Arc::clone(&state), plane, access).await;
    state.lock().await.teardown().await;
    result
}

/// Everything after the interface is configured: sockets, packet loop, signals.
async fn run_interface(
    state: Arc<tokio::sync::Mutex<State>>,
    plane: dataplane::DataPlane,
    access: Arc<Access>,
) -> Result<()> {
    let (name, peers, listen_port) = {
        let s = state.lock().await;
        (
            s.config.interface.name.clone(),
            s.config.peers.len(),
            s.listen_port,
        )
    };
    let threads = plane.queues.len();
    let public_key = dataplane::lock(&plane.engine)
        .public_key()
        .map_or_else(|| "(none: no private key)".to_string(), |k| k.to_string());

    let socket_path = sitelink_config::control_socket_path(&name);
    let listener = control::bind(&socket_path, 0o750, &access)?;
    tokio::spawn(control::serve(
        listener,
        Arc::clone(&state),
        Arc::clone(&access),
    ));
    // The WireGuard UAPI directory is shared with other implementations: create it like
    // they do (0755) and leave its ownership alone.
    let uapi_path = uapi_server::socket_path(name.as_str());
    if let Some(dir) = uapi_path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let uapi_listener = match control::bind(&uapi_path, 0o755, &access) {
        Ok(l) => l,
        Err(e) => {
            control::remove(&socket_path);
            return Err(e);
        }
    };
    tokio::spawn(uapi_server::serve(
        uapi_listener,
        Arc::clone(&state),
        Arc::clone(&access),
    ));

    let metrics_listen = state.lock().await.config.interface.metrics_listen.clone();
    if let Some(at) = &metrics_listen {
        match metrics::bind(at, &access) {
            Ok(listener) => {
                tokio::spawn(metrics::serve(listener, Arc::clone(&state)));
            }
            Err(e) => {
                control::remove(&socket_path);
                control::remove(&uapi_path);
                return Err(e);
            }
        }
    }

    // Everything that needs root exists now: the device, the sockets. Become the configured
    // user (keeping CAP_NET_ADMIN) before the packet thread starts.
    if let Err(e) = drop_privileges(&state).await {
        control::remove(&socket_path);
        control::remove(&uapi_path);
        return Err(e);
    }

    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let thread_name = name.clone();
    let (queue, stop) = (Arc::clone(&plane.handshakes), Arc::clone(&plane.stop));
    let handshake_thread = {
        let (engine, slot) = (Arc::clone(&plane.engine), Arc::clone(&plane.socket_slot));
        let (queue, stop) = (Arc::clone(&queue), Arc::clone(&stop));
        let thread_name = name.clone();
        std::thread::Builder::new()
            .name("sitelink-handshakes".into())
            .spawn(move || {
                let _span = tracing::info_span!("handshakes", interface = %thread_name).entered();
                handshakes::run(queue, engine, slot, stop)
            })
            .context("cannot start the handshake thread")?
    };
    let thread = std::thread::Builder::new()
        .name("sitelink-packets".into())
        .spawn(move || {
            let _span = tracing::info_span!("packets", interface = %thread_name).entered();
            let result = plane.run();
            let _ = done_tx.send(());
            result
        })
        .context("cannot start the packet thread")?;

    let memory = persist::path(name.as_str()).map(persist::Memory::new);
    if let Some(memory) = &memory {
        restore(&*state.lock().await, memory.path());
    }
    let metrics = metrics_listen
        .as_ref()
        .map_or_else(|| "off".to_string(), |m| m.to_string());
    tracing::info!(interface = %name, public_key = %public_key, listen_port, peers,
        threads, control = %socket_path.display(), metrics, "sitelinkd running");
    systemd::ready(&state.lock().await.status_line());
    tokio::spawn(report_status(Arc::clone(&state), memory));
    let hub = Arc::clone(&state.lock().await.events);
    tokio::spawn(events::run(Arc::clone(&state), hub, hooks::Hooks::start()));
    let ha_address = state.lock().await.config.interface.ha_address;
    if let Some(vip) = ha_address {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            if let Err(e) = ha::watch(Arc::clone(&state), vip).await {
                // Without the watch the role cannot follow the address: better no gateway
                // than two active ones.
                tracing::error!("HA: {e:#}; going standby");
                if let Err(e) = state.lock().await.set_ha(false).await {
                    tracing::error!("HA: {e:#}");
                }
            }
        });
    }

    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break }
            _ = &mut done_rx => { tracing::error!("packet loop stopped"); break }
            _ = hup.recv() => match state.lock().await.reload().await {
                Ok(summary) => {
                    for warning in &summary.warnings {
                        tracing::warn!("{warning}");
                    }
                    tracing::info!(%summary, "SIGHUP: reloaded")
                }
                Err(e) => tracing::error!("SIGHUP: reload refused, nothing changed: {e:#}"),
            },
        }
    }
    systemd::stopping();
    state.lock().await.plane.stop();
    queue.wake();
    let loop_result = thread
        .join()
        .map_err(|_| anyhow::anyhow!("the packet thread panicked"))?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    queue.wake();
    match handshake_thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("handshake thread: {e}"),
        Err(_) => tracing::error!("the handshake thread panicked"),
    }
    control::remove(&socket_path);
    control::remove(&uapi_path);
    if let Some(sitelink_config::MetricsListen::Unix(path)) = &metrics_listen {
        control::remove(path);
    }
    loop_result.map_err(|e| {
        if e.raw_os_error() == Some(libc::EBADFD) {
            // Someone ran `ip link del`: there is nothing left to serve. Exit with an error,
            // so that systemd (Restart=on-failure) creates the interface again.
            anyhow::anyhow!(
                "interface {name} was deleted under sitelinkd (its TUN device is gone); exiting (under systemd it is restarted)"
            )
        } else {
            anyhow::Error::new(e).context("packet loop failed")
        }
    })
}

/// Switches to `[interface] user` when started as root. Under the systemd unit the daemon
/// starts as that user already (with the ambient capability), and nothing happens here.
async fn drop_privileges(state: &tokio::sync::Mutex<State>) -> Result<()> {
    let mut state = state.lock().await;
    let Some(user) = state.config.interface.user.clone() else {
        return Ok(());
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        tracing::debug!(user, "not root; running as the current user");
        return Ok(());
    }
    privilege::drop_to(&user)?;
    // The key file is root's; reloads keep the key in use.
    state.key_fallback = state.config.interface.private_key.clone();
    Ok(())
}

/// Gives the engine what the previous run remembered (a bad state file is reported and
/// ignored: it is rewritten within seconds).
fn restore(state: &State, path: &std::path::Path) {
    match persist::load(path) {
        Ok(Some((remembered, modified))) => {
            let (restored, initiated) = state.restore(&remembered, modified);
            tracing::info!(path = %path.display(), restored, initiated,
                "restored learned endpoints; initiating to the peers that were up");
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("{e:#}"),
    }
}

/// Keeps systemd's STATUS= line ("2/3 peers up") current, and the remembered peer state
/// (if there is a state directory).
async fn report_status(state: Arc<tokio::sync::Mutex<State>>, mut memory: Option<persist::Memory>) {
    let mut last = String::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        let (line, snapshot) = {
            let mut state = state.lock().await;
            let (snapshot, latest) = {
                let engine = state.lock_engine();
                let snapshot = memory.as_ref().map(|_| persist::snapshot(&engine));
                let latest = state.clock.as_ref().and_then(|_| engine.last_initiation());
                (snapshot, latest)
            };
            if let Some(clock) = state.clock.as_mut() {
                clock.advance(latest);
            }
            (state.status_line(), snapshot)
        };
        if line != last {
            systemd::status(&line);
            last = line;
        }
        // A small file written on this (control) thread: only when something changed, and
        // the packet threads never wait for it.
        if let (Some(memory), Some(snapshot)) = (memory.as_mut(), snapshot) {
            memory.tick(snapshot);
        }
    }
}

/// Creates the TUN device with offload (TSO/GSO, checked by tun-rs; plain reads if the
/// kernel refuses) and a 1000-packet queue. Errors say which privilege or device is missing.
/// Packet threads: as `threads` says, else one per core up to
/// [`sitelink_config::DEFAULT_MAX_THREADS`].
fn packet_threads(configured: Option<u16>) -> usize {
    match configured {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(usize::from(sitelink_config::DEFAULT_MAX_THREADS)),
    }
}

/// The TUN device, as `threads` queues (a multi-queue device when more than one: the kernel
/// puts each flow on one queue, the one its reverse packets were written on).
fn create_tun(name: &InterfaceName, threads: usize) -> Result<Vec<tun_rs::SyncDevice>> {
    let built = tun_rs::DeviceBuilder::new()
        .name(name.as_str())
        .with(|b| {
            b.offload(true);
            b.tx_queue_len(1000);
            if threads > 1 {
                b.multi_queue(true);
            }
        })
        .build_sync();
    let first = built.map_err(|e| tun_error(name, e))?;
    let mut queues = Vec::with_capacity(threads);
    for _ in 1..threads {
        let queue = first.try_clone().with_context(|| {
            format!("cannot open another queue of TUN interface {name} (threads = {threads}; try fewer)")
        })?;
        queues.push(queue);
    }
    queues.insert(0, first);
    Ok(queues)
}

fn tun_error(name: &InterfaceName, e: std::io::Error) -> anyhow::Error {
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
}
