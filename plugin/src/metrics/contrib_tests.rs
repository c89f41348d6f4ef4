//! The Grafana dashboard and the Prometheus rules shipped in `contrib/`:
//! every `airgap_*` series they use is one the daemon exports, and the
//! rules pass `promtool check rules` and their own `promtool test rules`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::catalog::{Catalog, CatalogOptions};
use crate::health::{ContainerdState, Disk, Health};

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib")
}

const DASHBOARD: &str = "grafana/airgap-snapshotter.json";
const RULES: &str = "prometheus/airgap-snapshotter.rules.yml";
const RULES_TEST: &str = "prometheus/airgap-snapshotter.rules.test.yml";

/// The sample names a scrape of a daemon with every optional part on
/// (registration, the root's disk) can carry once every family has a
/// series, from its `# TYPE` lines:
/// counters as `_total`, histograms as `_bucket`, `_sum` and `_count`.
fn exported() -> BTreeSet<String> {
    // Families with labels show once they have a series: one of each.
    let m = super::global();
    m.grpc_call("Stat", tonic::Code::NotFound, 0.0);
    m.mirror_request("base", 200, "none", 0.0);
    m.upstream("contrib-test").error("failed");
    m.layer_fallback("contrib-test");
    m.images_signature(1, 0, 0);
    m.signature_refusal("serve", "warn");
    m.cluster_refusals("127.0.0.1:5443", "rate");
    m.cluster_handshake_failures("127.0.0.1:5443", "timeout");
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::empty(CatalogOptions {
        dirs: vec![dir.path().to_path_buf()],
        ..Default::default()
    })
    .unwrap();
    let health = Health::new(catalog)
        .with_containerd(ContainerdState::new(
            "/run/containerd/containerd.sock".into(),
        ))
        .with_disk(Disk {
            root: dir.path().to_path_buf(),
            cache_budget: 1,
            layer_store_budget: 1,
        });
    let text = super::encode(&super::registry(health));
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                names.insert(format!("{}_total", name.trim_end_matches("_total")));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Every `airgap_*` word of `text`.
fn used(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bairgap_[a-z0-9_]+").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

/// The PromQL expressions of the dashboard's panels and variables.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(contrib().join(DASHBOARD)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&json, &mut exprs);
    exprs
}

#[test]
fn every_series_the_dashboard_and_the_rules_use_is_exported() {
    let exported = exported();
    // The ones this change added, so that a scrape that lost them fails here.
    for name in [
        "airgap_build_info",
        "airgap_ready",
        "airgap_containerd_reachable",
        "airgap_grpc_requests_total",
        "airgap_grpc_errors_total",
        "airgap_grpc_request_duration_seconds_bucket",
        "airgap_mirror_request_duration_seconds_bucket",
        "airgap_import_passes_total",
        "airgap_root_filesystem_avail_bytes",
        "airgap_cluster_refusals_total",
        "airgap_cluster_tls_handshake_failures_total",
    ] {
        assert!(exported.contains(name), "{name} not exported: {exported:?}");
    }
    let exprs = dashboard_exprs();
    assert!(exprs.len() > 20, "{exprs:?}");
    let rules = std::fs::read_to_string(contrib().join(RULES)).unwrap();
    let tests = std::fs::read_to_string(contrib().join(RULES_TEST)).unwrap();
    let mut missing = Vec::new();
    for (file, text) in [
        (DASHBOARD, exprs.join("\n")),
        (RULES, rules),
        (RULES_TEST, tests),
    ] {
        let names = used(&text);
        assert!(!names.is_empty(), "{file} uses no airgap_ series");
        for name in names {
            if !exported.contains(&name) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "series used but not exported:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_alert_rules_pass_promtool() {
    let dir = contrib().join("prometheus");
    // $AIRGAP_PROMTOOL, else the one scripts/install-deps.sh unpacks, else
    // the one on PATH.
    let promtool = std::env::var_os("AIRGAP_PROMTOOL")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from("/var/cache/airgap-snapshotter/prometheus/usr/bin/promtool"),
            PathBuf::from("promtool"),
        ])
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success())
        });
    let Some(promtool) = promtool else {
        crate::testsupport::skip(
            "the_alert_rules_pass_promtool",
            "no promtool (scripts/install-deps.sh unpacks Debian's prometheus package's)",
        );
        return;
    };
    for args in [["check", "rules", RULES], ["test", "rules", RULES_TEST]] {
        let file = args[2].rsplit('/').next().unwrap();
        let out = Command::new(&promtool)
            .args(&args[..2])
            .arg(file)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {} {}:\n{}{}",
            args[0],
            args[1],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
