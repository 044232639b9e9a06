//! What operators see: Prometheus metrics scraped by a real Prometheus server (Debian's
//! `prometheus` package, started by the test in gateway A's namespace).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use sitelink_tests::{http_get, keypair, url_encode, Netns, Process, Sites};

const METRICS: &str = "127.0.0.1:9586";
const PROMETHEUS: &str = "127.0.0.1:9090";

/// The value of the single series `query` returns from Prometheus in `ns`, once it has one.
fn prometheus_value(ns: &Netns, query: &str) -> Option<f64> {
    let path = format!("/api/v1/query?query={}", url_encode(query));
    let (status, body) = http_get(ns, PROMETHEUS.parse().unwrap(), &path)?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let result = json["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

/// Polls `query` until `accept` takes its value, or 60 s pass.
fn wait_for(ns: &Netns, query: &str, accept: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = prometheus_value(ns, query);
        if let Some(v) = last.filter(|v| accept(*v)) {
            return v;
        }
        thread::sleep(Duration::from_millis(500));
    }
    panic!("Prometheus never gave an acceptable value for {query} (last: {last:?})");
}

#[test]
fn prometheus_scrapes_peer_bytes_and_up_state() {
    let sites = Sites::new();
    // A second peer on A that is configured but never connects: it must still have series.
    let (_, c_pub) = keypair();
    let c_peer = format!(
        "\n[[peer]]\nname = \"site-c\"\npublic-key = {c_pub:?}\nallowed-ips = [\"198.19.3.0/24\"]\n"
    );
    let pair = sites.start_pair_with(
        true,
        &format!("metrics-listen = {METRICS:?}\n"),
        &c_peer,
        &[],
    );
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(10)),
        "the tunnel did not come up"
    );

    // The endpoint itself: the text format, 404 elsewhere, and no key material.
    let metrics: SocketAddr = METRICS.parse().unwrap();
    let (status, text) = http_get(&sites.gw_a, metrics, "/metrics").expect("metrics answer");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(&format!(
            "sitelink_peer_up{{interface=\"{}\",peer=\"site-b\",public_key=\"{}\"}} 1",
            pair.a_if, pair.b_pub
        )),
        "{text}"
    );
    let a_key = std::fs::read_to_string(sites.dir.0.join("a.key")).unwrap();
    assert!(
        !text.contains(a_key.trim()),
        "the private key is in the metrics"
    );
    let (status, _) = http_get(&sites.gw_a, metrics, "/").expect("answer on /");
    assert_eq!(status, 404);

    // A real Prometheus scraping it every second.
    let config = sites.dir.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sitelink\n    static_configs:\n      - targets: [{METRICS:?}]\n"
        ),
        0o644,
    );
    let mut cmd = sites.gw_a.cmd("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            sites.dir.0.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"));
    let mut prometheus = Process::spawn("prometheus", cmd, sites.dir.0.join("prometheus.log"));

    let scraped = wait_for(&sites.gw_a, "up{job=\"sitelink\"}", |v| v == 1.0);
    assert_eq!(scraped, 1.0);
    let rx = wait_for(
        &sites.gw_a,
        "sitelink_peer_rx_bytes_total{peer=\"site-b\"}",
        |v| v > 0.0,
    );
    let status = sites.show_json(&pair.a_if);
    let show_rx = sitelink_tests::peer(&status, "site-b")["rx_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        rx <= show_rx as f64,
        "Prometheus has {rx} bytes, more than show's {show_rx}"
    );
    assert_eq!(
        wait_for(&sites.gw_a, "sitelink_peer_up{peer=\"site-b\"}", |_| true),
        1.0
    );
    assert_eq!(
        wait_for(&sites.gw_a, "sitelink_peer_up{peer=\"site-c\"}", |_| true),
        0.0,
        "a configured peer that is down reports up = 0"
    );
    assert_eq!(wait_for(&sites.gw_a, "sitelink_peers", |_| true), 2.0);
    prometheus.assert_running();
}
