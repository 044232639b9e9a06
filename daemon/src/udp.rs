//! The UDP sockets, one per packet thread (a `SO_REUSEPORT` group on one port when there
//! are several): dual-stack (IPv4 and IPv6 outer addresses) where the host has IPv6,
//! IPv4-only otherwise, with large kernel buffers. Owns: address mapping between the
//! socket's view (v4-mapped IPv6) and the engine's (plain IPv4).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};

use crate::sockopt;
use socket2::{Domain, Protocol, Socket, Type};

/// Kernel socket buffer size. The default 208 KiB overflows under a single TCP stream
/// (drops show up as UdpRcvbufErrors and TCP retransmits); 7 MiB is what wireguard-go and
/// the kernel module aim for.
const SOCKET_BUFFER: usize = 7 << 20;

/// A classic BPF socket filter that keeps only what can be a WireGuard message: the first
/// four bytes of the payload are a message type 1 to 4 and three zero bytes. The kernel drops
/// anything else before it takes socket-buffer space or a `recvmmsg` slot, so a flood of
/// garbage costs the packet loop nothing and cannot crowd out tunnel packets (drops show in
/// the kernel's UDP `InErrors`, `netstat -su`). Lengths are not checked here: with UDP GRO a
/// datagram the filter sees may be several coalesced messages; the engine checks them.
///
/// The filter of a UDP socket sees the UDP header first: the payload starts at offset 8.
const WIREGUARD_ONLY: [libc::sock_filter; 7] = {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }
    [
        op(LD_W_ABS, 0, 0, 8),        // A = payload[0..4], big-endian
        op(JEQ_K, 4, 0, 0x0400_0000), // transport data (the common case first)
        op(JEQ_K, 3, 0, 0x0100_0000), // handshake initiation
        op(JEQ_K, 2, 0, 0x0200_0000), // handshake response
        op(JEQ_K, 1, 0, 0x0300_0000), // cookie reply
        op(RET_K, 0, 0, 0),           // anything else: drop
        op(RET_K, 0, 0, u32::MAX),    // keep all of it
    ]
};

pub struct Udp {
    pub socket: UdpSocket,
    pub dual_stack: bool,
}

impl Udp {
    /// Binds the UDP port (0: the system picks) with firewall mark `mark` on every packet.
    pub fn bind(port: u16, mark: Option<u32>) -> Result<Self> {
        Self::bind_with(port, mark, false)
    }

    /// `count` sockets on one port, one per packet thread. With more than one they form a
    /// `SO_REUSEPORT` group: the kernel gives each datagram to the socket its 4-tuple hashes
    /// to, so one peer's datagrams always reach the same thread, in order.
    ///
    /// Security: only sockets of the same effective user can join a reuseport group (the
    /// kernel's rule), so another user cannot take a share of our datagrams. That the port is
    /// free is checked first with a plain bind, so a second sitelinkd (or WireGuard) on the
    /// port is refused as it is with one thread, instead of silently sharing it.
    pub fn bind_group(port: u16, mark: Option<u32>, count: usize) -> Result<Vec<Self>> {
        if count <= 1 {
            return Ok(vec![Self::bind(port, mark)?]);
        }
        if port != 0 {
            drop(Self::bind_with(port, None, false)?);
        }
        let first = Self::bind_with(port, mark, true)?;
        let port = first.local_port()?;
        let mut group = vec![first];
        for _ in 1..count {
            group.push(Self::bind_with(port, mark, true)?);
        }
        Ok(group)
    }

    fn bind_with(port: u16, mark: Option<u32>, reuse_port: bool) -> Result<Self> {
        let (socket, dual_stack) = match bind_v6(port, reuse_port) {
            Ok(s) => (s, true),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                if reuse_port {
                    s.set_reuse_port(true)?;
                }
                s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
                    .map_err(|e| bind_error(e, port))?;
                (s, false)
            }
            Err(e) => return Err(bind_error(e, port)),
        };
        socket.set_nonblocking(true)?;
        if mark.is_some() {
            set_mark(&socket, mark)?;
        }
        force_buffer(&socket, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
        force_buffer(&socket, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
        if let Err(e) = sockopt::attach_filter(socket.as_raw_fd(), &WIREGUARD_ONLY) {
            tracing::warn!(error = %e, "cannot attach the socket filter; garbage datagrams reach the packet loop");
        }
        Ok(Self {
            socket: socket.into(),
            dual_stack,
        })
    }

    /// Another handle on the same socket, for changing its mark from the control plane while
    /// the packet loop uses it.
    pub fn control_handle(&self) -> Result<UdpSocket> {
        self.socket
            .try_clone()
            .context("cannot duplicate the UDP socket")
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

/// The engine's view of a local address the socket reported (v4-mapped → IPv4).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
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

fn bind_v6(port: u16, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(false)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
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

/// Sets the firewall mark (SO_MARK, needs CAP_NET_ADMIN) on the tunnel's UDP packets; `None`
/// clears it. Policy routing uses it to keep them out of a default route through the tunnel.
pub fn set_mark(socket: &impl AsRawFd, mark: Option<u32>) -> Result<()> {
    let value = mark.unwrap_or(0);
    // The kernel takes the mark as an int and reads its 32 bits as unsigned.
    sockopt::set_int(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_MARK,
        value as libc::c_int,
    )
    .map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "cannot set fwmark {value:#x} on the UDP socket (it needs CAP_NET_ADMIN)"
        ))
    })
}

/// Raises a socket buffer past the `net.core.*mem_max` sysctl (needs CAP_NET_ADMIN, which
/// we have), falling back to the capped option.
fn force_buffer(socket: &Socket, force: libc::c_int, plain: libc::c_int) {
    if !sockopt::force_buffer(socket.as_raw_fd(), force, plain, SOCKET_BUFFER) {
        tracing::debug!("could not raise socket buffer size; using the kernel default");
    }
}
