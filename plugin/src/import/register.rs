//! One image registered: its documents into the content store, its layers
//! committed through containerd's Snapshots service, then its records, all
//! under a lease that keeps what is written until the records refer to it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::client::{ContainerdApi, Prepared, Scope};
use super::plan::Registration;
use super::records::{is_ours, wanted, Write};
use super::{ingest_ref, unix_nanos, ImportError, Importer, NamespaceReport};
use crate::labels::{AIRGAP_IMPORT, TARGET_SNAPSHOT_REF};

impl Importer {
    /// Registers one image and writes `writes` (its records that are
    /// missing, or the importer's and not right); returns how many records
    /// were written (those found to be someone else's are left alone).
    pub(super) async fn register<C: ContainerdApi>(
        &self,
        client: &C,
        ns: Scope<'_>,
        pass: u64,
        registration: &Registration,
        writes: &[(&str, Write)],
        report: &mut NamespaceReport,
    ) -> Result<usize, ImportError> {
        let lease = client.create_lease(ns).await?;
        let leased = ns.with_lease(&lease);
        let result = async {
            self.write_documents(client, leased, pass, registration)
                .await?;
            self.register_layers(client, leased, registration).await?;
            let mut written = 0;
            for &(name, write) in writes {
                if self
                    .write_record(client, leased, registration, name, write, report)
                    .await?
                {
                    written += 1;
                }
            }
            Ok(written)
        }
        .await;
        if let Err(e) = client.delete_lease(ns, &lease).await {
            tracing::warn!(%lease, error = %e, "cannot delete the registration lease (it expires by itself)");
        }
        result
    }

    /// The index, manifest and config, with containerd's GC labels.
    async fn write_documents<C: ContainerdApi>(
        &self,
        client: &C,
        ns: Scope<'_>,
        pass: u64,
        registration: &Registration,
    ) -> Result<(), ImportError> {
        for doc in &registration.documents {
            match client.content_labels(ns, &doc.digest).await? {
                None => {
                    let ingest = ingest_ref(pass, &doc.digest);
                    client
                        .write_content(
                            ns,
                            &ingest,
                            &doc.digest,
                            doc.data.clone(),
                            doc.labels.clone(),
                        )
                        .await?
                }
                Some(have) => {
                    // Unreferenced content (an earlier pass that failed) may
                    // be collected any moment: the lease holds it now.
                    client
                        .lease_resource(ns, "content", &doc.digest.to_string())
                        .await?;
                    if doc.labels.iter().any(|(k, v)| have.get(k) != Some(v)) {
                        client
                            .label_content(ns, &doc.digest, doc.labels.clone())
                            .await?
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates or repoints the record `name`; `false` when it turned out to
    /// be someone else's (made since the List, or repointed), left alone.
    async fn write_record<C: ContainerdApi>(
        &self,
        client: &C,
        ns: Scope<'_>,
        registration: &Registration,
        name: &str,
        write: Write,
        report: &mut NamespaceReport,
    ) -> Result<bool, ImportError> {
        let record = wanted(registration, name);
        if write == Write::Update {
            // containerd has no conditional update: read it again, and
            // update only a record that is still the importer's.
            match client.get_image(ns, name).await? {
                Some(now) if is_ours(&now) => {
                    client.update_image(ns, &record).await?;
                    return Ok(true);
                }
                Some(now) => {
                    self.leave_alone(ns, &now, report);
                    return Ok(false);
                }
                // Deleted meanwhile: made again below.
                None => {}
            }
        }
        if client.create_image(ns, &record).await? {
            return Ok(true);
        }
        // AlreadyExists: someone made it since the List; it is theirs.
        if let Some(now) = client.get_image(ns, name).await? {
            self.leave_alone(ns, &now, report);
        }
        Ok(false)
    }

    /// containerd's unpack, layer by layer: each layer's snapshot committed
    /// on the one below, named by its chain ID.
    async fn register_layers<C: ContainerdApi>(
        &self,
        client: &C,
        ns: Scope<'_>,
        registration: &Registration,
    ) -> Result<(), ImportError> {
        let snapshotter = &self.opts.snapshotter;
        let mut parent = String::new();
        for chain_id in &registration.chain {
            let name = chain_id.to_string();
            if client.snapshot_exists(ns, snapshotter, &name).await? {
                client
                    .lease_resource(ns, &format!("snapshots/{snapshotter}"), &name)
                    .await?;
            } else {
                let key = format!(
                    "airgap-import-{}-{} {name}",
                    unix_nanos(),
                    std::process::id()
                );
                let labels = HashMap::from([
                    (TARGET_SNAPSHOT_REF.to_string(), name.clone()),
                    (
                        AIRGAP_IMPORT.to_string(),
                        self.opts.mode.as_str().to_string(),
                    ),
                ]);
                let deadline = Instant::now() + self.opts.declined_wait;
                let mut prepared = client
                    .prepare_target(ns, snapshotter, &key, &parent, labels.clone())
                    .await?;
                while prepared == Prepared::Declined && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    prepared = client
                        .prepare_target(ns, snapshotter, &key, &parent, labels.clone())
                        .await?;
                }
                if prepared == Prepared::Declined {
                    return Err(ImportError::Declined {
                        image: registration.name.clone(),
                        archive: registration.archive.clone(),
                        chain_id: *chain_id,
                        snapshotter: snapshotter.clone(),
                    });
                }
            }
            parent = name;
        }
        Ok(())
    }
}
