//! The engine's handling of datagrams from the network (and, interleaved, of TUN packets,
//! timers and the handshake gate), structure-aware: see `sitelink_fuzz::engine`. Two engines
//! with fixed keys and one peer each; they complete a handshake (and exchange a data packet
//! each way) before the input's ops run, so datagrams meet an established session.
//! The input's first byte configures the sites, the rest is a sequence of ops.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sitelink_fuzz::engine::run_input(data, true);
});
