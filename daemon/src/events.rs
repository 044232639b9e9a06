//! Peer events as they happen: collected from the engine, turned into routes (with
//! `withdraw-when-down`), streamed to `sitelinkctl events` clients and handed to the
//! `on-peer-up` / `on-peer-down` hooks.
//!
//! Owns: the event task, the JSON form of an event (one object per line), the broadcast to
//! subscribers, and the order of reactions: routes first (a routing daemon watching the kernel
//! sees the change), then subscribers, then hooks. Doesn't own: deciding that a peer is up or
//! down (the engine's `liveness`), the routes themselves (`State::sync_withdrawn`), or running
//! hooks (`hooks.rs`).
//!
//! The engine calls the waker under its lock when it queues an event; the waker only
//! notifies this task (a `Notify` keeps one permit, so no wake-up is lost), which takes the
//! events out on the control plane, away from the packet path.
//!
//! A line, e.g.:
//! `{"time":1764693600.125,"interface":"sl0","event":"peer-down","peer":"site-b","public_key":"...","silent_s":3.1}`
//! `event` is `handshake`, `endpoint` (with `endpoint`), `peer-up`, `peer-down` (with
//! `silent_s`), `routes` (with `added` and `removed`, route texts), `ha` (with `state`:
//! `active` or `standby`), or `lost` (with `count`: events this subscriber missed because it
//! read too slowly).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sitelink_engine::liveness::{Event, EventKind};
use tokio::sync::{broadcast, Mutex, Notify};

use crate::hooks::Hooks;
use crate::state::State;

/// Lines a subscriber may fall behind by before it is told it lost some.
const BACKLOG: usize = 1024;

/// Where event lines go: every `sitelinkctl events` client subscribes here.
pub struct Hub {
    lines: broadcast::Sender<Arc<str>>,
    notify: Arc<Notify>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            lines: broadcast::channel(BACKLOG).0,
            notify: Arc::new(Notify::new()),
        }
    }
}

impl Hub {
    /// A receiver of every line sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.lines.subscribe()
    }

    /// What the engine calls when it queues an event (cheap, never blocks).
    pub fn waker(&self) -> Box<dyn Fn() + Send> {
        let notify = Arc::clone(&self.notify);
        Box::new(move || notify.notify_one())
    }

    /// An HA role change: `{"event":"ha","state":"active"}` (or `"standby"`).
    pub fn ha(&self, interface: &str, active: bool) {
        let mut line = Line::new(interface, "ha", SystemTime::now());
        line.state = Some(if active { "active" } else { "standby" });
        self.send(line);
    }

    fn send(&self, line: Line<'_>) {
        match serde_json::to_string(&line) {
            // No subscribers is not an error.
            Ok(text) => drop(self.lines.send(text.into())),
            Err(e) => tracing::error!("event not serializable: {e}"),
        }
    }
}

/// One event line.
#[derive(Serialize)]
pub struct Line<'a> {
    time: f64,
    interface: &'a str,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    silent_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    added: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
}

impl<'a> Line<'a> {
    fn new(interface: &'a str, event: &'static str, at: SystemTime) -> Self {
        Self {
            time: at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0),
            interface,
            event,
            peer: None,
            public_key: None,
            endpoint: None,
            silent_s: None,
            added: None,
            removed: None,
            count: None,
            state: None,
        }
    }

    fn of(interface: &'a str, e: &'a Event) -> Self {
        let mut line = Self::new(interface, e.kind.as_str(), e.at);
        line.peer = Some(&e.peer);
        line.public_key = Some(e.public_key.to_string());
        match &e.kind {
            EventKind::Endpoint { endpoint } => line.endpoint = Some(endpoint.to_string()),
            EventKind::Down { silent } => {
                line.silent_s = Some((silent.as_millis() as f64) / 1000.0);
            }
            EventKind::Up | EventKind::Handshake => {}
        }
        line
    }

    /// The line a subscriber gets in place of `count` lines it missed.
    pub fn lost(interface: &'a str, count: u64) -> Self {
        let mut line = Self::new(interface, "lost", SystemTime::now());
        line.count = Some(count);
        line
    }
}

/// Collects the engine's events forever, reacting to each batch.
pub async fn run(state: Arc<Mutex<State>>, hub: Arc<Hub>, hooks: Hooks) {
    loop {
        hub.notify.notified().await;
        let mut state = state.lock().await;
        let (events, lost) = state.lock_engine().take_events();
        let interface = state.config.interface.name.to_string();
        if lost > 0 {
            tracing::warn!(
                lost,
                "peer events were dropped before they could be handled"
            );
            hub.send(Line::lost(&interface, lost));
        }
        let liveness_changed = events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Up | EventKind::Down { .. }));
        // Routes first: by the time a hook or a subscriber hears of it, the kernel has it.
        if liveness_changed && state.config.interface.withdraw_when_down {
            match state.sync_withdrawn().await {
                Ok((added, removed)) if !added.is_empty() || !removed.is_empty() => {
                    tracing::info!(?added, ?removed, "routes follow peer liveness");
                    let mut line = Line::new(&interface, "routes", SystemTime::now());
                    line.added = Some(added);
                    line.removed = Some(removed);
                    hub.send(line);
                }
                Ok(_) => {}
                Err(e) => tracing::error!("routes for peer liveness: {e:#}"),
            }
        }
        let iface = &state.config.interface;
        for event in &events {
            hub.send(Line::of(&interface, event));
            let (command, word) = match event.kind {
                EventKind::Up => (&iface.on_peer_up, "up"),
                EventKind::Down { .. } => (&iface.on_peer_down, "down"),
                _ => continue,
            };
            if let Some(command) = command {
                hooks.run(command, &interface, event, word);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sitelink_config::PrivateKey;

    use super::*;

    #[test]
    fn an_event_is_one_json_object_with_only_its_fields() {
        let key = PrivateKey::generate().public_key();
        let at = UNIX_EPOCH + Duration::from_millis(1_764_693_600_125);
        let down = Event {
            at,
            peer: "site-b".into(),
            public_key: key,
            kind: EventKind::Down {
                silent: Duration::from_millis(3100),
            },
        };
        let text = serde_json::to_string(&Line::of("sl0", &down)).unwrap_or_default();
        assert_eq!(
            text,
            format!(
                r#"{{"time":1764693600.125,"interface":"sl0","event":"peer-down","peer":"site-b","public_key":"{key}","silent_s":3.1}}"#
            )
        );
        let moved = Event {
            kind: EventKind::Endpoint {
                endpoint: "198.18.0.7:51820"
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
            },
            ..down
        };
        let text = serde_json::to_string(&Line::of("sl0", &moved)).unwrap_or_default();
        assert!(
            text.contains(r#""event":"endpoint","#)
                && text.contains(r#""endpoint":"198.18.0.7:51820""#),
            "{text}"
        );
        assert!(!text.contains("silent_s"), "{text}");
        let lost = serde_json::to_string(&Line::lost("sl0", 7)).unwrap_or_default();
        assert!(
            lost.contains(r#""event":"lost""#) && lost.contains(r#""count":7"#),
            "{lost}"
        );
    }
}
