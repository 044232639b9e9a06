//! Writes the seed corpora: `cargo run --example write_seeds -- [DIR]` (DIR defaults to
//! `corpus` beside this crate's Cargo.toml). Existing files of the same name are replaced;
//! nothing else is touched. The engine seeds hold real messages captured from the engines
//! (fixed keys), encoded as `sitelink_fuzz::engine::Op` sequences.

use std::fs;
use std::path::{Path, PathBuf};

use sitelink_fuzz::engine::{self, IndexSel, Op, PacketSpec, Setup, World, KEY_A, KEY_B};
use sitelink_fuzz::{base_config_text, public_key};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).expect("create corpus dir");
    fs::write(d.join(name), bytes).expect("write seed");
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn config_seeds(dir: &Path) {
    let t = "config_toml";
    write(dir, t, "fixture.toml", base_config_text().as_bytes());
    let a = sitelink_fuzz::private_key(KEY_A).expose_base64();
    let b = public_key(KEY_B);
    write(
        dir,
        t,
        "minimal.toml",
        format!("[interface]\nprivate-key = \"{a}\"\n").as_bytes(),
    );
    write(
        dir,
        t,
        "site-a.toml",
        format!(
            "# Site A's gateway\n[interface]\nprivate-key = \"{a}\"\nlisten-port = 51820\n\
             address = [\"198.18.100.1/24\"]\n\n[[peer]]\nname = \"site-b\"\npublic-key = \"{b}\"\n\
             endpoint = \"198.18.0.2:51820\"\nallowed-ips = [\"198.18.100.2/32\", \"198.19.2.0/24\"]\n\
             persistent-keepalive = 25\n"
        )
        .as_bytes(),
    );
    write(
        dir,
        t,
        "everything.toml",
        format!(
            "[interface]\nname = \"wg-hub_0\"\nprivate-key = \"{a}\"\nlisten-port = 65535\n\
             address = [\"10.0.0.1/8\", \"fd00::1/8\"]\nmtu = 1280\ncontrol-group = \"sitelink\"\n\
             user = \"sitelink\"\nfwmark = 4294967295\ntable = 1234\n\n\
             [[peer]]\nname = \"v6.peer\"\npublic-key = \"{b}\"\n\
             preshared-key = \"{psk}\"\nendpoint = \"[2001:db8::2]:1\"\n\
             allowed-ips = [\"::/0\", \"0.0.0.0/0\", \"10.1.0.0/16\"]\npersistent-keepalive = 65535\n\n\
             [[peer]]\nname = \"named\"\npublic-key = \"{c}\"\nendpoint = \"gw.example.net:51820\"\n\
             allowed-ips = [\"10.1.2.0/24\"]\n",
            psk = sitelink_config::PresharedKey::from_bytes([0x5a; 32]).expose_base64(),
            c = public_key(0xcc),
        )
        .as_bytes(),
    );
    // The shipped example (its key file does not exist here: an error path) and typical
    // mistakes, each an error with a location.
    write(
        dir,
        t,
        "example-key-file.toml",
        b"[interface]\nprivate-key-file = \"/etc/sitelink/sl0.key\"\nlisten-port = 51820\n\
          address = [\"198.18.100.1/24\", \"fd18:100::1/64\"]\n\n[[peer]]\nname = \"site-b\"\n\
          public-key = \"REPLACE-with-site-b-public-key-from-sitelinkctl-pubkey=\"\n\
          endpoint = \"gw-b.example.net:51820\"\n\
          allowed-ips = [\"198.18.100.2/32\", \"198.19.2.0/24\", \"fd19:2::/64\"]\n\
          persistent-keepalive = 25\n",
    );
    write(
        dir,
        t,
        "duplicate-prefix.toml",
        format!(
            "[interface]\nprivate-key = \"{a}\"\n[[peer]]\nname = \"x\"\npublic-key = \"{b}\"\n\
             allowed-ips = [\"198.19.2.0/24\"]\n[[peer]]\nname = \"y\"\npublic-key = \"{c}\"\n\
             allowed-ips = [\"198.19.2.0/24\", \"198.19.2.1/24\"]\n",
            c = public_key(0xcc)
        )
        .as_bytes(),
    );
    write(
        dir,
        t,
        "shape-errors.toml",
        format!("[[interface]]\nprivate-key = \"{a}\"\n[peer]\nname = 1\n").as_bytes(),
    );
}

fn uapi_seeds(dir: &Path) {
    let t = "uapi_request";
    let b = hex(public_key(0xbb).as_bytes());
    let c = hex(public_key(0xcc).as_bytes());
    let e = hex(public_key(0xe1).as_bytes());
    let own = hex(public_key(0x77).as_bytes());
    let priv_hex = hex(&[0x42; 32]);
    write(dir, t, "get", b"get=1\n\n");
    // What `wg set sl0 peer E endpoint ... allowed-ips ...` sends.
    write(
        dir,
        t,
        "wg-set",
        format!(
            "set=1\npublic_key={e}\nendpoint=198.18.0.9:51820\nreplace_allowed_ips=true\n\
             allowed_ip=198.19.9.0/24\nallowed_ip=fd19:9::/64\npersistent_keepalive_interval=25\n\n"
        )
        .as_bytes(),
    );
    // What `wg setconf` sends (replace everything; one peer keeps its key and psk).
    write(
        dir,
        t,
        "wg-setconf",
        format!(
            "set=1\nprivate_key={priv_hex}\nlisten_port=0\nfwmark=0\nreplace_peers=true\n\
             public_key={b}\npreshared_key={psk}\nprotocol_version=1\nendpoint=[2001:db8::2]:51820\n\
             replace_allowed_ips=true\nallowed_ip=198.19.2.0/24\nallowed_ip=0.0.0.0/0\n\
             public_key={c}\nupdate_only=true\nallowed_ip=198.19.3.7/24\n\n",
            psk = hex(&[0x5b; 32])
        )
        .as_bytes(),
    );
    write(
        dir,
        t,
        "remove-and-get",
        format!(
            "set=1\npublic_key={c}\nremove=true\npublic_key={own}\nallowed_ip=10.0.0.0/8\n\
             public_key={b}\nallowed_ip=-198.19.2.0/24\nallowed_ip=198.19.0.0/16\r\n\nget=1\n\n"
        )
        .as_bytes(),
    );
    write(
        dir,
        t,
        "device-only",
        format!(
            "set=1\nprivate_key={}\nlisten_port=51821\nfwmark=51820\n\n",
            hex(&[0; 32])
        )
        .as_bytes(),
    );
    write(
        dir,
        t,
        "bad-line",
        b"set=1\nlisten_port=65536\nnot a key value\n\n",
    );
}

fn control_seeds(dir: &Path) {
    let t = "control_request";
    let b = public_key(0xbb);
    write(dir, t, "show", br#"{"cmd":"show"}"#);
    write(dir, t, "reload", br#"{"cmd":"reload"}"#);
    write(dir, t, "save", br#"{"cmd":"save"}"#);
    write(
        dir,
        t,
        "peer-add",
        format!(
            r#"{{"cmd":"peer-add","peer":{{"name":"site-b","public-key":"{b}","allowed-ips":["198.19.2.0/24","fd19:2::/64"],"endpoint":"gw-b.example.net:51820","persistent-keepalive":25,"preshared-key-file":"/etc/sitelink/site-b.psk"}},"save":true}}"#
        )
        .as_bytes(),
    );
    write(
        dir,
        t,
        "peer-set",
        format!(
            r#"{{"cmd":"peer-set","name":"site-b","changes":{{"rename":"site-b2","public-key":"{b}","allowed-ips":[],"endpoint":"[2001:db8::1]:51820","clear-endpoint":false,"persistent-keepalive":null,"clear-persistent-keepalive":true,"preshared-key-file":null,"clear-preshared-key":true}}}}"#
        )
        .as_bytes(),
    );
    write(
        dir,
        t,
        "peer-remove",
        br#"{"cmd":"peer-remove","peer":"site-b","save":false}"#,
    );
}

/// Real datagrams: a handshake between the fixture sites, captured.
fn captured() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let w = World::with_session(Setup::from_byte(0, true));
    let a: Vec<Vec<u8>> = w.history(0).map(<[u8]>::to_vec).collect();
    let b: Vec<Vec<u8>> = w.history(1).map(<[u8]>::to_vec).collect();
    (a, b)
}

fn engine_seeds(dir: &Path) {
    let (from_a, from_b) = captured();
    let init = from_a
        .iter()
        .find(|m| m[0] == 1)
        .expect("A sent an initiation")
        .clone();
    let response = from_b
        .iter()
        .find(|m| m[0] == 2)
        .expect("B sent a response")
        .clone();
    let data_a = from_a
        .iter()
        .find(|m| m[0] == 4)
        .expect("A sent data")
        .clone();
    // The harness's mac1 is the one the engines compute.
    let mut fixed = init.clone();
    engine::fix_mac1(&mut fixed, &public_key(KEY_B));
    assert_eq!(
        fixed, init,
        "harness mac1 differs from the engine's (initiation)"
    );
    let mut fixed = response.clone();
    engine::fix_mac1(&mut fixed, &public_key(KEY_A));
    assert_eq!(
        fixed, response,
        "harness mac1 differs from the engine's (response)"
    );
    let hello = PacketSpec::simple(b"hello");
    // The harness's cookie replies decrypt (and with flag 0x40 they do not).
    for (flags, invalid) in [(0u8, 0u64), (0x40, 1)] {
        let ops = [
            Op::Tunnel {
                from: 0,
                flags: 0,
                packet: hello.clone(),
            },
            Op::Cookie {
                to: 0,
                flags,
                index: IndexSel::known(0),
                nonce: [9; 24],
                cookie: [7; 16],
            },
        ];
        let mut input = vec![0u8];
        input.extend(Op::encode_all(&ops));
        let w = engine::run_input(&input, false);
        assert_eq!(
            w.counters(0).invalid,
            invalid,
            "cookie reply check (flags {flags:#x})"
        );
    }
    let big = PacketSpec {
        payload: vec![0x55; 1400],
        ..PacketSpec::simple(b"")
    };
    let v6 = PacketSpec {
        version: 6,
        proto: 58,
        ..PacketSpec::simple(b"ping6")
    };
    let spoofed = PacketSpec {
        src: 0x21,
        ..PacketSpec::simple(b"spoofed")
    };
    let bytes = |to, flags, b: &[u8]| Op::Bytes {
        to,
        flags,
        bytes: b.to_vec(),
    };
    let raw = |to, flags, kind, index, body: &[u8]| Op::Raw {
        to,
        flags,
        kind,
        index,
        body: body.to_vec(),
    };

    // (name, setup byte, ops, for the session target too)
    let flows: Vec<(&str, u8, Vec<Op>)> = vec![
        (
            "handshake",
            0,
            vec![
                Op::Tunnel {
                    from: 0,
                    flags: 1,
                    packet: hello.clone(),
                },
                Op::Deliver { max: 16 },
                Op::Tunnel {
                    from: 1,
                    flags: 1,
                    packet: hello.clone(),
                },
                Op::Deliver { max: 16 },
            ],
        ),
        (
            "handshake-psk-keepalive",
            0b0101,
            vec![
                Op::Timeout {
                    flags: 4 | 8,
                    amount: 0,
                },
                Op::Deliver { max: 16 },
                Op::Tunnel {
                    from: 1,
                    flags: 1,
                    packet: v6.clone(),
                },
                Op::Timeout {
                    flags: 2 | 4 | 8,
                    amount: 30,
                },
                Op::Deliver { max: 16 },
            ],
        ),
        (
            "captured-init",
            0,
            vec![
                bytes(1, 0, &init),
                Op::Deliver { max: 8 },
                bytes(1, 0, &init),    // replayed: old timestamp
                bytes(1, 0x02, &init), // from an attacker's address
            ],
        ),
        (
            "captured-messages",
            0x08,
            vec![
                bytes(0, 0, &response),
                bytes(1, 0x04, &data_a),
                bytes(1, 0x10, &init[..100]),
            ],
        ),
        (
            "raw-kinds",
            0,
            vec![
                raw(1, 0x10, 1, IndexSel::any(0x0102_0300), &[0x11; 140]),
                raw(0, 0x10, 2, IndexSel::known(0), &[0x22; 80]),
                raw(0, 0, 3, IndexSel::known(0), &[0x33; 56]),
                raw(1, 0, 4, IndexSel::known(0), &[0x44; 48]),
                raw(1, 0, 0, IndexSel::any(7), &[0x55; 8]),
                raw(1, 0x20, 1, IndexSel::any(1), &[0x66; 140]),
            ],
        ),
        (
            "cookie",
            0,
            vec![
                Op::Tunnel {
                    from: 0,
                    flags: 0,
                    packet: hello.clone(),
                },
                Op::Cookie {
                    to: 0,
                    flags: 0,
                    index: IndexSel::known(0),
                    nonce: [9; 24],
                    cookie: [7; 16],
                },
                Op::Timeout {
                    flags: 2 | 4,
                    amount: 6,
                },
                Op::Deliver { max: 16 },
            ],
        ),
        (
            "replay-data",
            0,
            vec![
                Op::Tunnel {
                    from: 0,
                    flags: 1,
                    packet: hello.clone(),
                },
                Op::Deliver { max: 16 },
                Op::Tunnel {
                    from: 0,
                    flags: 0,
                    packet: big.clone(),
                },
                Op::Replay {
                    to: 1,
                    flags: 0,
                    pick: 0,
                    mutations: vec![],
                },
                Op::Replay {
                    to: 1,
                    flags: 0,
                    pick: 0,
                    mutations: vec![],
                },
                Op::Replay {
                    to: 1,
                    flags: 0x01,
                    pick: 0,
                    mutations: vec![(20, 0x01)],
                },
                Op::Tunnel {
                    from: 0,
                    flags: 1,
                    packet: spoofed.clone(),
                },
            ],
        ),
        (
            "psk-change",
            0x01,
            vec![
                Op::Tunnel {
                    from: 0,
                    flags: 1,
                    packet: hello.clone(),
                },
                Op::Deliver { max: 16 },
                Op::SetPsk { side: 0, psk: 0x33 },
                Op::SetPsk { side: 1, psk: 0x33 },
                Op::Timeout {
                    flags: 2 | 4 | 8,
                    amount: 130,
                },
                Op::Deliver { max: 16 },
                Op::Tunnel {
                    from: 1,
                    flags: 1,
                    packet: hello.clone(),
                },
                Op::Replay {
                    to: 1,
                    flags: 0x10,
                    pick: 3,
                    mutations: vec![],
                },
                Op::Deliver { max: 16 },
            ],
        ),
        // B under load: A's initiation gets a cookie reply from B's gate, A initiates again
        // with mac2 and gets through.
        (
            "loaded-handshake",
            0x20,
            vec![
                Op::Tunnel {
                    from: 0,
                    flags: 1,
                    packet: hello.clone(),
                },
                Op::Deliver { max: 16 },
                Op::Deliver { max: 16 },
                Op::Tunnel {
                    from: 1,
                    flags: 1,
                    packet: hello.clone(),
                },
                Op::Deliver { max: 16 },
            ],
        ),
        (
            "gated-captured",
            0,
            vec![
                bytes(1, 0x80, &init),
                bytes(1, 0x80 | 0x02, &init),
                bytes(0, 0x80, &response),
            ],
        ),
        // An always-on link over ten minutes, in steps: keepalives and rekeys.
        (
            "live-link",
            0b0100,
            vec![
                Op::Tunnel {
                    from: 0,
                    flags: 1,
                    packet: hello.clone(),
                },
                Op::Timeout {
                    flags: 0x10 | 2 | 4 | 8,
                    amount: 600,
                },
                Op::Tunnel {
                    from: 1,
                    flags: 1,
                    packet: hello.clone(),
                },
            ],
        ),
        (
            "expiry",
            0b0100,
            vec![
                Op::Tunnel {
                    from: 0,
                    flags: 1,
                    packet: hello.clone(),
                },
                Op::Timeout {
                    flags: 3 | 4 | 8,
                    amount: 20,
                },
                Op::Deliver { max: 16 },
                Op::Timeout {
                    flags: 3 | 4 | 8,
                    amount: 60,
                },
                Op::Deliver { max: 16 },
            ],
        ),
    ];
    for (name, setup, ops) in &flows {
        let mut input = vec![*setup];
        input.extend(Op::encode_all(ops));
        // Every seed decodes to the ops it was written from, and runs.
        assert_eq!(
            Op::decode_all(&input[1..]).len(),
            ops.len(),
            "seed {name} round trip"
        );
        let w = engine::run_input(&input, false);
        eprintln!(
            "engine seed {name}: {} decrypted packets (no session start)",
            w.tunnel_out
        );
        // The seeds are what the fuzzer starts from: each runs to its end.
        assert!(!w.spent(), "seed {name} spends the handshake budget");
        if *name == "loaded-handshake" {
            assert!(
                w.gate_counters(1).cookie_replies > 0,
                "B's gate sent no cookie reply"
            );
            assert!(
                w.tunnel_out >= 2,
                "the handshake through B's gate did not complete"
            );
        }
        write(dir, "engine_datagram_no_session", name, &input);
        let w = engine::run_input(&input, true);
        eprintln!(
            "engine seed {name}: {} decrypted packets (session start)",
            w.tunnel_out
        );
        assert!(!w.spent(), "seed {name} spends the handshake budget (session start)");
        write(dir, "engine_datagram_session", name, &input);
    }
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    config_seeds(&dir);
    uapi_seeds(&dir);
    control_seeds(&dir);
    engine_seeds(&dir);
    eprintln!("seeds written under {}", dir.display());
}
