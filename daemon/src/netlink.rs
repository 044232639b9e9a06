//! Interface configuration over rtnetlink: MTU, link up, addresses and one route per
//! allowed-ip prefix. Owns: remembering what it added so `teardown` removes exactly that.
//! Doesn't own: creating the TUN device (that is an ioctl on /dev/net/tun, in main).

use std::io;
use std::net::IpAddr;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use sitelink_config::Cidr;

pub struct Netlink {
    handle: Handle,
    index: u32,
    routes: Vec<(Cidr, RouteMessage)>,
}

impl Netlink {
    /// Opens a netlink connection (driven on the current tokio runtime) for interface `index`.
    pub fn open(index: u32) -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("cannot open a netlink socket")?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            index,
            routes: Vec::new(),
        })
    }

    /// Sets the MTU, adds the addresses and brings the link up.
    pub async fn configure_link(&self, mtu: u16, addresses: &[Cidr]) -> Result<()> {
        self.set_mtu(mtu).await?;
        for cidr in addresses {
            self.add_address(*cidr).await?;
        }
        let up = LinkUnspec::new_with_index(self.index).up().build();
        self.handle
            .link()
            .set(up)
            .execute()
            .await
            .map_err(to_io)
            .context("cannot bring the interface up")
    }

    pub async fn set_mtu(&self, mtu: u16) -> Result<()> {
        let msg = LinkUnspec::new_with_index(self.index)
            .mtu(u32::from(mtu))
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(to_io)
            .with_context(|| format!("cannot set MTU {mtu}"))
    }

    /// Adds an address (already present is fine).
    pub async fn add_address(&self, cidr: Cidr) -> Result<()> {
        let added = self
            .handle
            .address()
            .add(self.index, cidr.addr(), cidr.prefix_len())
            .execute()
            .await
            .map_err(to_io);
        match added {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                Err(e).with_context(|| format!("cannot add address {cidr}"))
            }
            _ => Ok(()),
        }
    }

    /// Removes an address (already gone is fine).
    pub async fn remove_address(&self, cidr: Cidr) -> Result<()> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(cidr.addr())
            .set_prefix_length_filter(cidr.prefix_len())
            .execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(to_io)
            .context("cannot list addresses")?
        {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(to_io)
                .with_context(|| format!("cannot remove address {cidr}"))?;
        }
        Ok(())
    }

    /// Routes `cidr` into the interface. A route that already exists is left alone (and not
    /// removed at exit); the warning says where traffic will go instead.
    pub async fn add_route(&mut self, cidr: Cidr) -> Result<()> {
        let net = cidr.network();
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .map_err(|e| anyhow::anyhow!("cannot build route {net}: {e}"))?
            .output_interface(self.index)
            .build();
        match self
            .handle
            .route()
            .add(msg.clone())
            .execute()
            .await
            .map_err(to_io)
        {
            Ok(()) => {
                self.routes.push((net, msg));
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                tracing::warn!(route = %net,
                    "a route for this allowed-ips prefix already exists (another interface, or a default route); \
                     traffic for it may not enter the tunnel");
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("cannot add route {net}")),
        }
    }

    /// Removes the route for `cidr` if we added it.
    pub async fn remove_route(&mut self, cidr: Cidr) -> Result<()> {
        let net = cidr.network();
        let Some(at) = self.routes.iter().position(|(c, _)| *c == net) else {
            return Ok(());
        };
        let (_, msg) = self.routes.remove(at);
        match self.handle.route().del(msg).execute().await.map_err(to_io) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                Err(e).with_context(|| format!("cannot remove route {net}"))
            }
            _ => Ok(()),
        }
    }

    /// Removes every route we added. Addresses go with the interface when its TUN file
    /// descriptor closes.
    pub async fn teardown(&mut self) {
        for (net, msg) in std::mem::take(&mut self.routes) {
            if let Err(e) = self.handle.route().del(msg).execute().await {
                tracing::debug!(route = %net, error = %e, "route already gone");
            }
        }
    }
}

/// rtnetlink's error as the errno it carries, so callers can match EEXIST and messages
/// read like the OS's ("File exists") rather than a debug dump of the netlink message.
fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}
