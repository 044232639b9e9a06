//! `on-peer-up` / `on-peer-down`: the operator's commands, run when a peer goes up or down
//! (what keepalived's `track_script`s and BIRD setups call).
//!
//! Owns: running a hook (`/bin/sh -c COMMAND sitelink-hook PEER STATE`, so the command line
//! sees the peer's name as `$1` and "up"/"down" as `$2`, never spliced into its text), its
//! environment, its time limit and what is logged of it. Hooks run one at a time, in event
//! order, on a task of their own: a slow hook delays the next hook, never the daemon.
//!
//! Environment: `SITELINK_INTERFACE`, `SITELINK_PEER`, `SITELINK_PUBLIC_KEY`, `SITELINK_STATE`
//! ("up"/"down"), `SITELINK_EVENT_TIME` (Unix seconds). Hooks run as the daemon's user
//! (`[interface] user` after start-up) with stdin from /dev/null; their output is logged.

use std::process::Stdio;
use std::time::{Duration, UNIX_EPOCH};

use sitelink_engine::liveness::Event;
use tokio::sync::mpsc;

/// A hook still running after this is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Hooks waiting to run; more are dropped (and logged).
const QUEUE: usize = 256;
/// Output of a hook kept for the log.
const OUTPUT_SHOWN: usize = 2000;

struct Job {
    command: String,
    env: Vec<(&'static str, String)>,
    peer: String,
    state: &'static str,
}

/// The hook queue's sending end.
#[derive(Clone)]
pub struct Hooks {
    jobs: mpsc::Sender<Job>,
}

impl Hooks {
    /// Starts the task that runs hooks.
    pub fn start() -> Self {
        let (jobs, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx));
        Self { jobs }
    }

    /// Queues `command` for `event` of `interface` (`state`: "up" or "down").
    pub fn run(&self, command: &str, interface: &str, event: &Event, state: &'static str) {
        let time = event
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let job = Job {
            command: command.to_string(),
            env: vec![
                ("SITELINK_INTERFACE", interface.to_string()),
                ("SITELINK_PEER", event.peer.clone()),
                ("SITELINK_PUBLIC_KEY", event.public_key.to_string()),
                ("SITELINK_STATE", state.to_string()),
                ("SITELINK_EVENT_TIME", time.to_string()),
            ],
            peer: event.peer.clone(),
            state,
        };
        if self.jobs.try_send(job).is_err() {
            tracing::warn!(peer = %event.peer, state,
                "on-peer-{state} hook not run: {QUEUE} hooks are waiting already (is a hook hanging?)");
        }
    }
}

async fn run(mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.recv().await {
        run_one(job).await;
    }
}

async fn run_one(job: Job) {
    let hook = format!("on-peer-{}", job.state);
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(&job.command)
        .arg("sitelink-hook")
        .arg(&job.peer)
        .arg(job.state)
        .envs(job.env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(peer = %job.peer, "{hook} hook could not start /bin/sh: {e}");
            return;
        }
    };
    match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
        Err(_) => tracing::error!(peer = %job.peer,
            "{hook} hook still running after {HOOK_TIMEOUT:?}: killed (make it finish sooner, or run the slow part in the background)"),
        Ok(Err(e)) => tracing::error!(peer = %job.peer, "{hook} hook: {e}"),
        Ok(Ok(out)) => {
            let text = |b: &[u8]| {
                let s = String::from_utf8_lossy(b);
                let s = s.trim();
                s.chars().take(OUTPUT_SHOWN).collect::<String>()
            };
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            if out.status.success() {
                tracing::info!(peer = %job.peer, %stdout, %stderr, "{hook} hook done");
            } else {
                tracing::warn!(peer = %job.peer, status = %out.status, %stdout, %stderr,
                    "{hook} hook failed");
            }
        }
    }
}
