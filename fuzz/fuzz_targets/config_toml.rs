//! The config file parser: arbitrary bytes as TOML text into `Config::parse`. A config that
//! parses must also pass `validate()` (the same rules, on the value), and written back as TOML
//! (every value explicit, secrets inline) it must parse to the same config.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sitelink_config::Config;
use sitelink_fuzz::{fingerprint, render_config, CONFIG_PATH};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Key file paths resolve under a directory that does not exist (see CONFIG_PATH), so a
    // relative `private-key-file` is never read.
    let path = Path::new(CONFIG_PATH);
    let config = match Config::parse(text, path) {
        Ok(config) => config,
        Err(e) => {
            // Formatting the error (line/column, quoting) is part of what users see.
            let _ = e.to_string();
            return;
        }
    };
    if let Err(e) = config.validate() {
        panic!("Config::parse accepted a config that validate() refuses: {e}\n--- input:\n{text}");
    }
    let rendered = render_config(&config);
    let again = match Config::parse(&rendered, path) {
        Ok(again) => again,
        Err(e) => panic!(
            "the parsed config, written back, does not parse: {e}\n--- input:\n{text}\n--- rendered:\n{rendered}"
        ),
    };
    let (before, after) = (fingerprint(&config), fingerprint(&again));
    assert_eq!(
        before, after,
        "re-parse changed the config\n--- input:\n{text}\n--- rendered:\n{rendered}"
    );
});
