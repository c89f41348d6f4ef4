//! An in-memory containerd for the importer's tests: the calls of
//! [`ContainerdApi`] on maps, with containerd's answers (AlreadyExists on a
//! second Create, NotFound on a Delete whose target moved, a Prepare with a
//! target committed at once), a journal of every call that changes
//! something, and a hook to play another client between a List and what
//! follows it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;

use crate::digest::Digest;
use crate::import::client::{ContainerdApi, ImageRecord, Prepared, Scope};
use crate::import::ImportError;
use crate::labels::TARGET_SNAPSHOT_REF;
use crate::proto::containerd::types::Descriptor;

/// What another client does right after the next List answered.
type Hook = Box<dyn FnOnce(&mut FakeState) + Send>;

/// containerd's state, per namespace.
#[derive(Default)]
pub struct FakeState {
    /// (namespace, name) -> record.
    pub images: BTreeMap<(String, String), ImageRecord>,
    /// (namespace, digest) -> labels.
    pub content: HashMap<(String, Digest), HashMap<String, String>>,
    /// (namespace, snapshot name) of committed snapshots.
    pub snapshots: HashSet<(String, String)>,
    /// Every call that changed something, as `call namespace name`.
    pub journal: Vec<String>,
    /// Ingest refs of every content write.
    pub ingest_refs: Vec<String>,
    /// References pulled through CRI.
    pub pulled: Vec<String>,
    leases: u64,
    after_list: Option<Hook>,
}

/// See the module doc.
#[derive(Default)]
pub struct FakeContainerd {
    state: Mutex<FakeState>,
}

impl FakeContainerd {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads or changes the state directly (as another client would).
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// The record `name` of `namespace`.
    pub fn image(&self, namespace: &str, name: &str) -> Option<ImageRecord> {
        self.with(|s| s.images.get(&key(namespace, name)).cloned())
    }

    /// Names of every record of `namespace`.
    pub fn image_names(&self, namespace: &str) -> Vec<String> {
        self.with(|s| {
            s.images
                .keys()
                .filter(|(ns, _)| ns == namespace)
                .map(|(_, name)| name.clone())
                .collect()
        })
    }

    /// Puts `record` in `namespace`, as kubelet's pull or `ctr` would.
    pub fn put_image(&self, namespace: &str, record: ImageRecord) {
        self.with(|s| {
            s.images.insert(key(namespace, &record.name), record);
        })
    }

    /// The calls that changed something so far.
    pub fn journal(&self) -> Vec<String> {
        self.with(|s| s.journal.clone())
    }

    /// Runs `f` right after the next List answered: what another client
    /// does between the importer's List and its next call.
    pub fn after_next_list(&self, f: impl FnOnce(&mut FakeState) + Send + 'static) {
        self.with(|s| s.after_list = Some(Box::new(f)));
    }
}

impl FakeState {
    pub fn put_image(&mut self, namespace: &str, record: ImageRecord) {
        self.images.insert(key(namespace, &record.name), record);
    }

    fn log(&mut self, call: &str, ns: Scope<'_>, what: &str) {
        self.journal.push(format!("{call} {} {what}", ns.namespace));
    }
}

/// A record as another client makes it: `name` at `digest`, with `labels`.
pub fn record(name: &str, digest: &str, labels: &[(&str, &str)]) -> ImageRecord {
    ImageRecord {
        name: name.to_string(),
        target: Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
            digest: digest.to_string(),
            size: 1,
            annotations: HashMap::new(),
        },
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_string(), name.to_string())
}

fn code(call: &'static str, code: tonic::Code) -> ImportError {
    ImportError::Call {
        call,
        code,
        message: "fake".to_string(),
    }
}

impl ContainerdApi for FakeContainerd {
    async fn cri_pull(&self, reference: &str) -> Result<String, ImportError> {
        self.with(|s| s.pulled.push(reference.to_string()));
        Err(code("CRI PullImage", tonic::Code::NotFound))
    }

    async fn create_lease(&self, _ns: Scope<'_>) -> Result<String, ImportError> {
        Ok(self.with(|s| {
            s.leases += 1;
            format!("lease-{}", s.leases)
        }))
    }

    async fn delete_lease(&self, _ns: Scope<'_>, _id: &str) -> Result<(), ImportError> {
        Ok(())
    }

    async fn lease_resource(
        &self,
        _ns: Scope<'_>,
        _kind: &str,
        _id: &str,
    ) -> Result<(), ImportError> {
        Ok(())
    }

    async fn content_labels(
        &self,
        ns: Scope<'_>,
        digest: &Digest,
    ) -> Result<Option<HashMap<String, String>>, ImportError> {
        Ok(self.with(|s| s.content.get(&(ns.namespace.to_string(), *digest)).cloned()))
    }

    async fn write_content(
        &self,
        ns: Scope<'_>,
        ingest: &str,
        digest: &Digest,
        data: Bytes,
        labels: HashMap<String, String>,
    ) -> Result<(), ImportError> {
        if Digest::of(&data) != *digest {
            return Err(code("content.Write", tonic::Code::FailedPrecondition));
        }
        self.with(|s| {
            s.log("content.Write", ns, &digest.to_string());
            s.ingest_refs.push(ingest.to_string());
            s.content
                .insert((ns.namespace.to_string(), *digest), labels);
        });
        Ok(())
    }

    async fn label_content(
        &self,
        ns: Scope<'_>,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<(), ImportError> {
        self.with(|s| {
            s.log("content.Update", ns, &digest.to_string());
            match s.content.get_mut(&(ns.namespace.to_string(), *digest)) {
                Some(have) => {
                    have.extend(labels);
                    Ok(())
                }
                None => Err(code("content.Update", tonic::Code::NotFound)),
            }
        })
    }

    async fn list_images(&self, ns: Scope<'_>) -> Result<Vec<ImageRecord>, ImportError> {
        Ok(self.with(|s| {
            let list = s
                .images
                .iter()
                .filter(|((n, _), _)| n == ns.namespace)
                .map(|(_, r)| r.clone())
                .collect();
            if let Some(hook) = s.after_list.take() {
                hook(s);
            }
            list
        }))
    }

    async fn get_image(
        &self,
        ns: Scope<'_>,
        name: &str,
    ) -> Result<Option<ImageRecord>, ImportError> {
        Ok(self.image(ns.namespace, name))
    }

    async fn create_image(&self, ns: Scope<'_>, image: &ImageRecord) -> Result<bool, ImportError> {
        Ok(self.with(|s| {
            let k = key(ns.namespace, &image.name);
            if s.images.contains_key(&k) {
                return false;
            }
            s.log("images.Create", ns, &image.name);
            s.images.insert(k, image.clone());
            true
        }))
    }

    async fn update_image(&self, ns: Scope<'_>, image: &ImageRecord) -> Result<(), ImportError> {
        self.with(|s| {
            s.log("images.Update", ns, &image.name);
            match s.images.get_mut(&key(ns.namespace, &image.name)) {
                Some(have) => {
                    have.target = image.target.clone();
                    have.labels.extend(image.labels.clone());
                    Ok(())
                }
                None => Err(code("images.Update", tonic::Code::NotFound)),
            }
        })
    }

    async fn delete_image(
        &self,
        ns: Scope<'_>,
        name: &str,
        target: &Descriptor,
    ) -> Result<bool, ImportError> {
        Ok(self.with(|s| {
            let k = key(ns.namespace, name);
            // containerd 2.x: NotFound when the target does not match.
            match s.images.get(&k) {
                Some(have) if have.target.digest == target.digest => {
                    s.log("images.Delete", ns, name);
                    s.images.remove(&k);
                    true
                }
                _ => false,
            }
        }))
    }

    async fn snapshot_exists(
        &self,
        ns: Scope<'_>,
        _snapshotter: &str,
        key: &str,
    ) -> Result<bool, ImportError> {
        Ok(self.with(|s| {
            s.snapshots
                .contains(&(ns.namespace.to_string(), key.to_string()))
        }))
    }

    async fn prepare_target(
        &self,
        ns: Scope<'_>,
        _snapshotter: &str,
        _key: &str,
        _parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Prepared, ImportError> {
        let target = labels
            .get(TARGET_SNAPSHOT_REF)
            .ok_or(ImportError::Protocol("Prepare without a target"))?;
        self.with(|s| {
            s.log("snapshots.Prepare", ns, target);
            s.snapshots
                .insert((ns.namespace.to_string(), target.clone()));
        });
        Ok(Prepared::Committed)
    }
}
