//! `--json` of `verify` and `config --merge --dry-run`, through the real
//! binary on real files: the documented field names (docs/reference.md),
//! the exit status, and a corrupted archive named with its digest. No
//! containerd is needed: E2E_ONCE in scripts/test.sh.

use std::process::Command;

use anyhow::{ensure, Context, Result};

use airgap_integration::image::{self, ImageSpec};
use airgap_integration::{daemon, run_as_root, TestDir};

/// `airgap-snapshotter ARGS`: exit code and stdout parsed as JSON.
fn json(args: &[&str]) -> Result<(i32, serde_json::Value)> {
    let out = Command::new(daemon::binary()?)
        .args(args)
        .output()
        .context("running airgap-snapshotter")?;
    let code = out.status.code().unwrap_or(-1);
    let value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{args:?}: stdout is not JSON (exit {code}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((code, value))
}

#[test]
fn verify_json() {
    run_as_root("verify_json", |test| {
        let work = TestDir::new(test)?;
        let good = work.path().join("good.tar");
        let built = image::write_oci_archive(
            &ImageSpec {
                name: "example.test/json/good".into(),
                tag: "v1".into(),
                layers: image::sample_layers("example.test/json/good:v1")?,
            },
            &good,
        )?;
        let (code, v) = json(&["verify", "--json", good.to_str().unwrap()])?;
        ensure!(code == 0, "verify of a good archive: exit {code}: {v}");
        ensure!(v["ok"] == true, "{v}");
        let a = &v["archives"][0];
        ensure!(
            a["path"] == good.to_str().unwrap() && a["ok"] == true,
            "{v}"
        );
        ensure!(
            a["blobs"].as_u64().unwrap_or(0) > 0 && a["images"] == 1,
            "{v}"
        );
        ensure!(a["failures"].as_array().is_some_and(Vec::is_empty), "{v}");

        // One byte of the first layer's data flipped: that layer is named.
        let bad = work.path().join("bad.tar");
        let mut bytes = std::fs::read(&good)?;
        let layer = built
            .layer_digests
            .first()
            .context("the sample image has a layer")?
            .trim_start_matches("sha256:")
            .to_string();
        let name = format!("blobs/sha256/{layer}");
        let at = bytes
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .context("the layer's tar entry")?;
        // The data starts at the next 512-byte block after the header.
        let data = (at / 512 + 1) * 512 + 100;
        bytes[data] ^= 0xff;
        std::fs::write(&bad, &bytes)?;
        let missing = work.path().join("missing.tar");
        let (code, v) = json(&[
            "verify",
            "--json",
            bad.to_str().unwrap(),
            missing.to_str().unwrap(),
        ])?;
        ensure!(code == 1, "verify of a bad archive: exit {code}: {v}");
        ensure!(v["ok"] == false, "{v}");
        let archives = v["archives"].as_array().context("archives")?;
        let of = |p: &std::path::Path| {
            archives
                .iter()
                .find(|a| a["path"] == p.to_str().unwrap())
                .cloned()
        };
        let missing_row = of(&missing).context("the missing archive is listed")?;
        ensure!(
            missing_row["ok"] == false && missing_row["failures"][0]["digest"].is_null(),
            "{v}"
        );
        let bad_row = of(&bad).context("the bad archive is listed")?;
        ensure!(bad_row["ok"] == false, "{v}");
        let named = bad_row["failures"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["digest"].as_str().is_some_and(|d| d.contains(&layer)));
        ensure!(named, "the corrupted layer {layer} is not named: {v}");
        Ok(())
    });
}

#[test]
fn config_dry_run_json() {
    run_as_root("config_dry_run_json", |test| {
        let work = TestDir::new(test)?;
        let config = work.path().join("config.toml");
        let original = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"registry.k8s.io/pause:3.6\"\n";
        std::fs::write(&config, original)?;
        let hosts = work.path().join("certs.d");
        std::fs::create_dir_all(hosts.join("_default"))?;
        let site = "ca = \"/etc/ssl/site.pem\"\n[host.\"https://cache.example\"]\n  capabilities = [\"pull\"]\n";
        std::fs::write(hosts.join("_default/hosts.toml"), site)?;
        let (code, v) = json(&[
            "config",
            "--config",
            "/dev/null",
            "--merge",
            "--containerd-config",
            config.to_str().unwrap(),
            "--hosts-dir",
            hosts.to_str().unwrap(),
            "--dry-run",
            "--json",
        ])?;
        ensure!(code == 0, "exit {code}: {v}");
        ensure!(v["dry_run"] == true, "{v}");
        let files = v["files"].as_array().context("files")?;
        let kinds: Vec<(&str, &str)> = files
            .iter()
            .map(|f| {
                (
                    f["kind"].as_str().unwrap_or(""),
                    f["action"].as_str().unwrap_or(""),
                )
            })
            .collect();
        ensure!(
            kinds == [("containerd-config", "update"), ("hosts", "update")],
            "{v}"
        );
        ensure!(files[0]["path"] == config.to_str().unwrap(), "{v}");
        let diff = files[1]["diff"].as_str().unwrap_or("");
        ensure!(
            diff.contains("+[host.\"http://127.0.0.1:5050\"]") && !diff.contains("-ca = "),
            "the hosts.toml diff adds the mirror and keeps the CA: {diff}"
        );
        ensure!(
            std::fs::read_to_string(&config)? == original,
            "--dry-run wrote config.toml"
        );
        ensure!(
            std::fs::read_to_string(hosts.join("_default/hosts.toml"))? == site,
            "--dry-run wrote hosts.toml"
        );
        Ok(())
    });
}
