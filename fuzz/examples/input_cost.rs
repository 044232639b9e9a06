//! What the inputs of an engine corpus cost, in handshake messages (the X25519 work that is
//! most of an engine target's time; see `HANDSHAKE_BUDGET`):
//! `cargo run --release --example input_cost -- [--no-session] DIR...`
//! prints the number of inputs, their mean cost and time, how many reach the budget, and the
//! share of inputs at each cost.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use sitelink_fuzz::engine::{run_input, HANDSHAKE_BUDGET};

fn main() {
    let mut session = true;
    let mut costs: BTreeMap<u32, usize> = BTreeMap::new();
    let mut micros = 0u128;
    for arg in std::env::args().skip(1) {
        if arg == "--no-session" {
            session = false;
            continue;
        }
        let entries = match std::fs::read_dir(Path::new(&arg)) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("input_cost: cannot read directory {arg}: {e}");
                std::process::exit(1);
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let data = match std::fs::read(&path) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("input_cost: cannot read {}: {e}", path.display());
                    std::process::exit(1);
                }
            };
            let start = Instant::now();
            let cost = run_input(&data, session).handshakes();
            micros += start.elapsed().as_micros();
            *costs.entry(cost).or_default() += 1;
        }
    }
    let inputs: usize = costs.values().sum();
    let total: u64 = costs.iter().map(|(&c, &n)| u64::from(c) * n as u64).sum();
    if inputs == 0 {
        eprintln!("input_cost: no inputs (give one or more corpus directories)");
        std::process::exit(1);
    }
    let at_budget: usize = costs.range(HANDSHAKE_BUDGET..).map(|(_, n)| n).sum();
    println!(
        "{inputs} inputs ({}): {:.1} handshake messages and {} us each on average; \
         {at_budget} ({:.0}%) reach the budget of {HANDSHAKE_BUDGET}",
        if session {
            "session start"
        } else {
            "no session"
        },
        total as f64 / inputs as f64,
        micros / inputs as u128,
        100.0 * at_budget as f64 / inputs as f64,
    );
    for (cost, n) in &costs {
        println!("{cost:3} {n:5} {:5.1}%", 100.0 * *n as f64 / inputs as f64);
    }
}
