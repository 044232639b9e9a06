//! The engine's handling of datagrams from the network (and, interleaved, of TUN packets,
//! timers and the handshake gate), structure-aware: see `sitelink_fuzz::engine`. Two engines
//! with fixed keys and one peer each; no session exists when the input's ops start (the input
//! may start one). The input's first byte configures the sites, the rest is a sequence of ops.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sitelink_fuzz::engine::run_input(data, false);
});
