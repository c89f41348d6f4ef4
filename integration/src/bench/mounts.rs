//! --mounts: the CRI pull through mirror + snapshotter with the layers
//! mounted from the archive (EROFS) in each way the daemon prepares them,
//! and (9) reading every file of the image over mounted or extracted
//! layers.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::bundle::BIG;
use super::report::{human, Secs};
use super::steps::{cri_pull, Bench, READ_ALL};
use super::system::{
    self, count_lines, count_lines_all, cpu_since, cpu_ticks, drop_caches, du_bytes, hwm_kib,
};
use crate::containerd::{self, K8S_NS};
use crate::process;

impl Bench {
    /// --mounts: CRI PullImage through mirror + snapshotter (as (5)), the
    /// daemon started with `flags` and its metrics on. `prepared`: the pull
    /// starts once the daemon has prepared what it prepares on arrival (not
    /// timed; its time and disk go into the note). `run`: then (9) a
    /// container of the image reads every file of it, caches dropped first
    /// (recorded as `ID-run`, with that label).
    pub fn step_mount(
        &mut self,
        id: &str,
        label: &str,
        kind: &str,
        prepared: bool,
        run: Option<&str>,
        flags: &[&str],
    ) -> Result<()> {
        let _lock = crate::serial()?;
        let root = self.fresh_root(kind)?;
        let base = du_bytes(&[&root]);
        let metrics = format!("127.0.0.1:{}", crate::free_port()?);
        let started = Instant::now();
        let daemon = self.start_daemon(kind, &root, flags, Some(metrics.clone()))?;
        let mut prep = String::new();
        if prepared {
            process::wait_until(
                "the daemon to prepare the layers",
                Duration::from_secs(900),
                || {
                    // Every layer the daemon prepares on arrival is prepared:
                    // none pending, and some done (the gauge is 0 too before
                    // the first is queued).
                    let pending = system::metric(&metrics, "airgap_layer_prepare_pending");
                    let done =
                        system::metric(&metrics, "airgap_layers_prepared_total").unwrap_or(0);
                    Ok(pending == Some(0) && done > 0)
                },
            )?;
            prep = format!(
                "prepared on arrival (not timed) in {:.2} s from the daemon's start, {} layers of the bundle, {} in the daemon root; ",
                started.elapsed().as_secs_f64(),
                system::metric(&metrics, "airgap_layers_prepared_total").unwrap_or(0),
                human(Some(du_bytes(&[&root]).saturating_sub(base)))
            );
        }
        let c = self.containerd(containerd::SNAPSHOTTER, &daemon.socket)?;
        drop_caches()?;
        let cpu0 = cpu_ticks(daemon.pid());
        let t = cri_pull(c.address(), BIG)?;
        let croot = c.private_dir().join("root");
        let disk = du_bytes(&[&croot, &root]);
        let split = format!(
            "containerd {} + daemon {}",
            human(Some(du_bytes(&[&croot]))),
            human(Some(du_bytes(&[&root])))
        );
        let log = &daemon.log;
        let mounted = count_lines(log, "layer mounted from archive (EROFS)");
        let built = count_lines_all(
            log,
            &["layer mounted from archive (EROFS)", "prepared_now=true"],
        );
        let failed = count_lines(log, "mounting the layer from the archive failed");
        let m = system::metric(&metrics, "airgap_layers_mounted_total")
            .map_or("-".to_string(), |m| m.to_string());
        let mut note = format!(
            "{prep}layers from the archive: {}/{}; mounted (EROFS) by then: {mounted} (airgap_layers_mounted_total {m}; prepared by the pull: {built}), extracted: {}",
            count_lines(log, "layer committed from archive"),
            self.facts.big_layers.len(),
            count_lines(log, "layer extracted from archive")
        );
        if failed > 0 {
            note.push_str(&format!(
                ", mounts that failed (extracted instead): {failed}"
            ));
        }
        note.push_str(&format!(
            "; disk: {split}; {}",
            cpu_since(daemon.pid(), cpu0)
        ));
        self.record(id, label, t, disk, hwm_kib(daemon.pid()), note);
        if let Some(run_label) = run {
            self.check_seq += 1;
            let name = format!("bench-read-{}", self.check_seq);
            drop_caches()?;
            let t0 = Instant::now();
            let out = c
                .ctr(&[
                    "-n",
                    K8S_NS,
                    "run",
                    "--rm",
                    "--snapshotter",
                    containerd::SNAPSHOTTER,
                    BIG,
                    &name,
                    "/bin/sh",
                    "-c",
                    READ_ALL,
                ])
                .context("reading the image's files failed")?;
            let t = Secs::new(t0.elapsed().as_secs_f64(), 2);
            if !out.contains("go1.19") {
                bail!("go version printed: {out}");
            }
            let disk = du_bytes(&[&croot, &root]);
            let hwm = hwm_kib(daemon.pid());
            // Not timed: what the reading covered, the same over either kind of layers.
            let name = format!("bench-count-{}", self.check_seq);
            let counted = c.ctr(&[
                "-n",
                K8S_NS,
                "run",
                "--rm",
                "--snapshotter",
                containerd::SNAPSHOTTER,
                BIG,
                &name,
                "/bin/sh",
                "-c",
                "find / -xdev -type f -printf '%s\\n' | awk '{ s += $1 } END { print NR, s }'",
            ])?;
            let mut fields = counted.split_whitespace();
            let files = fields.next().unwrap_or("-").to_string();
            let bytes = fields.next().and_then(|b| b.parse().ok());
            let note = format!(
                "includes starting and stopping the container; files read: {files}, {}",
                human(bytes)
            );
            self.record(&format!("{id}-run"), run_label, t, disk, hwm, note);
        }
        self.check_runs(&c, containerd::SNAPSHOTTER, BIG)?;
        drop(c);
        daemon.stop()
    }
}
