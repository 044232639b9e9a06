//! The one UDP socket: dual-stack (IPv4 and IPv6 outer addresses) where the host has IPv6,
//! IPv4-only otherwise, with large kernel buffers. Owns: address mapping between the
//! socket's view (v4-mapped IPv6) and the engine's (plain IPv4).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// Kernel socket buffer size. The default 208 KiB overflows under a single TCP stream
/// (drops show up as UdpRcvbufErrors and TCP retransmits); 7 MiB is what wireguard-go and
/// the kernel module aim for.
const SOCKET_BUFFER: usize = 7 << 20;

pub struct Udp {
    pub socket: UdpSocket,
    pub dual_stack: bool,
}

impl Udp {
    pub fn bind(port: u16) -> Result<Self> {
        let (socket, dual_stack) = match bind_v6(port) {
            Ok(s) => (s, true),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
                    .map_err(|e| bind_error(e, port))?;
                (s, false)
            }
            Err(e) => return Err(bind_error(e, port)),
        };
        socket.set_nonblocking(true)?;
        force_buffer(&socket, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
        force_buffer(&socket, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
        Ok(Self {
            socket: socket.into(),
            dual_stack,
        })
    }

    pub fn local_port(&self) -> Result<u16> {
        Ok(self
            .socket
            .local_addr()
            .context("cannot read the UDP socket's address")?
            .port())
    }

    /// The address to hand the socket for `dst`.
    pub fn to_socket(&self, dst: SocketAddr) -> SocketAddr {
        match dst {
            SocketAddr::V4(v4) if self.dual_stack => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        }
    }
}

/// The engine's view of an address the socket reported.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

fn bind_v6(port: u16) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(false)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(s)
}

fn bind_error(e: io::Error, port: u16) -> anyhow::Error {
    let hint = if e.kind() == io::ErrorKind::AddrInUse {
        " (another sitelinkd or WireGuard interface uses it; pick another `listen-port`)"
    } else {
        ""
    };
    anyhow::Error::new(e).context(format!("cannot listen on UDP port {port}{hint}"))
}

/// Raises a socket buffer past the `net.core.*mem_max` sysctl (needs CAP_NET_ADMIN, which
/// we have), falling back to the capped option.
fn force_buffer(socket: &Socket, force: libc::c_int, plain: libc::c_int) {
    let size = SOCKET_BUFFER as libc::c_int;
    for opt in [force, plain] {
        // SAFETY: setsockopt on a socket fd we own, with a pointer to a live c_int and its
        // exact size; the kernel copies the value and keeps no reference.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
    tracing::debug!("could not raise socket buffer size; using the kernel default");
}
