//! Which image records are the importer's, and one namespace brought in line
//! with the plan.
//!
//! The rule: the importer changes or deletes only records it created. A
//! record is its own while it carries [`AIRGAP_CREATED`], which only the
//! importer's successful Create puts there, and that label names the
//! record's target (the importer keeps it so when it repoints its own
//! record). A record anyone else made lacks the label: kubelet's pull of the
//! same name and digest, or a Create that came between the pass's List and
//! the importer's own (whose Create then fails with AlreadyExists). A record
//! someone else repointed (a pull of the same tag) no longer matches it.
//! Either is left alone, logged once. Before an Update or a Delete the record
//! is read again, and the Delete names the target it read: containerd 2.x
//! then refuses it if the record moved in between; 1.6 and 1.7 ignore the
//! target, leaving a window of one call.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::client::{ContainerdApi, ImageRecord, Scope};
use super::plan::Registration;
use super::{ImportError, Importer, NamespaceReport};
use crate::labels::{AIRGAP_ARCHIVE, AIRGAP_CREATED};

/// Whether the importer created `record` and nobody repointed it since.
pub(super) fn is_ours(record: &ImageRecord) -> bool {
    record.labels.get(AIRGAP_CREATED) == Some(&record.target.digest)
}

/// Whether `record` is what `registration` wants: the importer's, at the
/// registration's target, with every one of its labels.
fn is_right(record: &ImageRecord, registration: &Registration) -> bool {
    record.target.digest == registration.target.digest
        && registration
            .labels
            .iter()
            .all(|(k, v)| record.labels.get(k) == Some(v))
}

/// What a record of a registration needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Write {
    /// No record of that name: create it.
    Create,
    /// The importer's record, pointing elsewhere or with other labels.
    Update,
}

/// The record `registration` wants under `name` (its labels carry
/// [`AIRGAP_CREATED`]: see `plan::registration`).
pub(super) fn wanted(registration: &Registration, name: &str) -> ImageRecord {
    ImageRecord {
        name: name.to_string(),
        target: registration.target.clone(),
        labels: registration.labels.clone(),
    }
}

impl Importer {
    /// Brings one namespace in line with `plan`; unregisters only what
    /// came from archives in `scope`. `pass` names this pass's content
    /// ingests.
    pub(super) async fn reconcile<C: ContainerdApi>(
        &self,
        client: &C,
        ns: Scope<'_>,
        pass: u64,
        plan: &[Registration],
        scope: &[PathBuf],
    ) -> Result<NamespaceReport, ImportError> {
        let mut report = NamespaceReport {
            namespace: ns.namespace.to_string(),
            ..Default::default()
        };
        let existing: HashMap<String, ImageRecord> = client
            .list_images(ns)
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        for registration in plan {
            let mut writes = Vec::new();
            let mut right = 0;
            for name in &registration.records {
                match existing.get(name) {
                    None => writes.push((name.as_str(), Write::Create)),
                    Some(r) if is_right(r, registration) => right += 1,
                    Some(r) if is_ours(r) => writes.push((name.as_str(), Write::Update)),
                    Some(r) => self.leave_alone(ns, r, &mut report),
                }
            }
            if writes.is_empty() {
                // No record of this image is the importer's to keep.
                if right == 0 {
                    continue;
                }
                // Its records are right: so is the image, unless containerd
                // lost the layers (a restart onto an older state).
                let top = registration.chain.last().map(ToString::to_string);
                if let Some(top) = top {
                    if client
                        .snapshot_exists(ns, &self.opts.snapshotter, &top)
                        .await?
                    {
                        report.unchanged += 1;
                        continue;
                    }
                }
            }
            match self
                .register(client, ns, pass, registration, &writes, &mut report)
                .await
            {
                Ok(written) if written == 0 && !writes.is_empty() => {}
                Ok(_) => {
                    tracing::info!(namespace = ns.namespace, image = %registration.name,
                        archive = %registration.archive.display(), "image registered");
                    report.registered.push(registration.name.clone());
                }
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::warn!(namespace = ns.namespace, image = %registration.name,
                        archive = %registration.archive.display(), error = %e, "image not registered");
                    report
                        .failed
                        .push((registration.name.clone(), e.to_string()));
                }
            }
        }
        self.unregister(client, ns, plan, scope, &existing, &mut report)
            .await?;
        Ok(report)
    }

    /// Deletes the importer's records (as listed in `existing`) that no
    /// registration of `plan` claims and whose archive is in `scope`: each
    /// read again first, and deleted only if it is still the importer's and
    /// still points where it did.
    async fn unregister<C: ContainerdApi>(
        &self,
        client: &C,
        ns: Scope<'_>,
        plan: &[Registration],
        scope: &[PathBuf],
        existing: &HashMap<String, ImageRecord>,
        report: &mut NamespaceReport,
    ) -> Result<(), ImportError> {
        let wanted: HashSet<&str> = plan
            .iter()
            .flat_map(|r| r.records.iter().map(String::as_str))
            .collect();
        let mut gone: Vec<&ImageRecord> = existing
            .values()
            .filter(|r| is_ours(r) && !wanted.contains(r.name.as_str()))
            .filter(|r| {
                r.labels
                    .get(AIRGAP_ARCHIVE)
                    .is_some_and(|a| in_scope(Path::new(a), scope))
            })
            .collect();
        gone.sort_by(|a, b| a.name.cmp(&b.name));
        for record in gone {
            match client.get_image(ns, &record.name).await? {
                Some(now) if is_ours(&now) && now.target.digest == record.target.digest => {}
                Some(now) => {
                    self.leave_alone(ns, &now, report);
                    continue;
                }
                None => continue,
            }
            if client
                .delete_image(ns, &record.name, &record.target)
                .await?
            {
                tracing::info!(namespace = ns.namespace, image = %record.name,
                    archive = record.labels.get(AIRGAP_ARCHIVE).map(String::as_str).unwrap_or_default(),
                    "image unregistered: no archive holds it any more");
                report.removed.push(record.name.clone());
            }
        }
        Ok(())
    }

    /// Notes a record of an archived image's name that the importer did not
    /// create (or that someone repointed): it stays as it is. Logged once
    /// per name and target, not on every pass.
    pub(super) fn leave_alone(
        &self,
        ns: Scope<'_>,
        record: &ImageRecord,
        report: &mut NamespaceReport,
    ) {
        report.left_alone.push(record.name.clone());
        let key = (
            ns.namespace.to_string(),
            record.name.clone(),
            record.target.digest.clone(),
        );
        if self.left_alone_logged.lock().unwrap().insert(key) {
            tracing::info!(namespace = ns.namespace, image = %record.name, target = %record.target.digest,
                "an image record of an archived image's name was not created by this importer \
                 (or was repointed since): left alone");
        }
    }
}

/// Whether `archive` is one of the watched paths or inside one of them.
fn in_scope(archive: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter()
        .any(|d| archive == d || archive.parent() == Some(d.as_path()))
}
