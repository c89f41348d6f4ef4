//! k3s's habit: references of the image lists (`*.txt`) beside the archives
//! that no archive holds are pulled through containerd's CRI (so through
//! hosts.toml, the mirror and its upstreams).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::client::{ContainerdApi, Scope};
use super::{ImportError, ImportReport, Importer};

/// CRI's namespace: image lists are pulled only when it is registered.
pub(super) const CRI_NAMESPACE: &str = "k8s.io";
/// A listed image that could not be pulled is tried again after this long.
const PULL_RETRY: Duration = Duration::from_secs(300);

impl Importer {
    /// Pulls the listed references no archive holds and CRI's namespace
    /// lacks: one attempt per reference every [`PULL_RETRY`] while it fails.
    pub(super) async fn pull_listed<C: ContainerdApi>(
        &self,
        client: &C,
        report: &mut ImportReport,
    ) -> Result<(), ImportError> {
        let catalog = self.catalog.clone();
        let listed = tokio::task::spawn_blocking(move || {
            catalog
                .image_lists()
                .into_iter()
                .filter_map(|(reference, list)| {
                    let normalized = crate::catalog::reference::Reference::parse(&reference)
                        .map(|r| r.to_string());
                    match normalized {
                        Ok(name) if catalog.resolve(&name).is_none() => Some((name, list)),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(list = %list.display(), %reference, error = %e, "not an image reference");
                            None
                        }
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|_| ImportError::Protocol("reading image lists failed"))?;
        if listed.is_empty() {
            return Ok(());
        }
        let present: HashSet<String> = client
            .list_images(Scope::new(CRI_NAMESPACE))
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect();
        for (name, list) in listed {
            if present.contains(&name) {
                continue;
            }
            if let Some(failed) = self.pull_failures.lock().unwrap().get(&name) {
                if failed.elapsed() < PULL_RETRY {
                    continue;
                }
            }
            match client.cri_pull(&name).await {
                Ok(id) => {
                    tracing::info!(image = %name, %id, list = %list.display(), "listed image pulled");
                    self.pull_failures.lock().unwrap().remove(&name);
                    report.pulled.push(name);
                }
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::warn!(image = %name, list = %list.display(), error = %e,
                        "listed image is in no archive and could not be pulled; retried later");
                    self.pull_failures
                        .lock()
                        .unwrap()
                        .insert(name.clone(), Instant::now());
                    report.pull_failed.push((name, e.to_string()));
                }
            }
        }
        Ok(())
    }
}
