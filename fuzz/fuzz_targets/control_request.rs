//! The control socket's request parser: arbitrary bytes into
//! `serde_json::from_slice::<control::Request>`, as the daemon reads one request line. A
//! request that parses must serialize and parse back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sitelink_config::control::Request;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<Request>(data) else {
        return;
    };
    let json = serde_json::to_vec(&request).expect("a Request serializes");
    let again: Request = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "serialized request does not parse back: {e}: {}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(request, again, "request changed in a JSON round trip");
});
