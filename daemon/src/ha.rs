//! HA pair (`ha = "vrrp"`, `ha-address`): two gateways with the same key, one virtual
//! address moved between them by keepalived (VRRP). The one holding the address is active;
//! the other is a standby that sends and answers nothing and routes nothing.
//!
//! Owns: watching this namespace's addresses (netlink address events, so a move is seen at
//! once, not at a poll) and telling the state which role we have. Doesn't own: what the roles
//! mean (`State::set_ha`, the engine's `set_active`) or moving the address (keepalived).
//!
//! Going active sends an initiation to every peer with a known endpoint at once, from the
//! virtual address: the remote sites switch to us within a round trip instead of waiting
//! (5 s to 2 minutes) for their own timers. A gateway whose clock is behind the last
//! initiation it sent is refused activation (peers would refuse its handshakes); that is
//! retried every few seconds, so an NTP correction brings it in.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{new_multicast_connection, MulticastGroup};
use tokio::sync::Mutex;

use crate::state::State;

/// How often a refused activation (clock behind) is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Whether `msg` is about `vip`.
fn is_vip(msg: &AddressMessage, vip: IpAddr) -> bool {
    msg.attributes.iter().any(|a| match a {
        AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => *ip == vip,
        _ => false,
    })
}

/// Whether `vip` is on any interface of this namespace now.
async fn present(handle: &rtnetlink::Handle, vip: IpAddr) -> Result<bool> {
    let mut dump = handle.address().get().execute();
    while let Some(msg) = dump
        .try_next()
        .await
        .context("cannot list this host's addresses")?
    {
        if is_vip(&msg, vip) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Follows `vip` for as long as the daemon runs.
pub async fn watch(state: Arc<Mutex<State>>, vip: IpAddr) -> Result<()> {
    // Subscribe before the first look, so that no change falls between the two.
    let (conn, handle, mut messages) =
        new_multicast_connection(&[MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv6Ifaddr])
            .context("cannot watch address changes (netlink)")?;
    tokio::spawn(conn);
    let mut here = present(&handle, vip).await?;
    let mut pending = apply(&state, here).await;
    loop {
        let retry = async {
            match pending {
                true => tokio::time::sleep(RETRY).await,
                false => std::future::pending().await,
            }
        };
        tokio::select! {
            message = messages.next() => {
                let Some((message, _)) = message else {
                    anyhow::bail!("the netlink address watch ended");
                };
                let relevant = match &message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m))
                    | NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => {
                        is_vip(m, vip)
                    }
                    _ => false,
                };
                if !relevant {
                    continue;
                }
                // The same address may be on two interfaces: ask what is true now.
                let now_here = present(&handle, vip).await?;
                if now_here != here || pending {
                    here = now_here;
                    pending = apply(&state, here).await;
                }
            }
            () = retry => pending = apply(&state, here).await,
        }
    }
}

/// Tells the state; `true` if it must be tried again (activation refused).
async fn apply(state: &Mutex<State>, active: bool) -> bool {
    let mut state = state.lock().await;
    match state.set_ha(active).await {
        Ok(changed) => {
            if changed {
                state
                    .events
                    .ha(state.config.interface.name.as_str(), active);
            }
            false
        }
        Err(e) => {
            tracing::error!("HA: {e:#}");
            active
        }
    }
}
