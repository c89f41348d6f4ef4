//! The schema: the three redb tables, the JSON [`Record`] stored per
//! snapshot, and the lookups on the snapshots table both kinds of
//! transaction share.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::snapshot::SnapshotError;

/// name -> JSON [`Record`].
pub(super) const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// (parent id, child id) -> child name.
pub(super) const PARENTS: TableDefinition<(u64, u64), &str> = TableDefinition::new("parents");
/// "id" -> last id handed out.
pub(super) const SEQUENCE: TableDefinition<&str, u64> = TableDefinition::new("sequence");

/// Largest key + value of one label containerd accepts.
const MAX_LABEL_BYTES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// The name containerd's filters use (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A point in time as containerd stores it (nanosecond precision, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }
}

/// Disk usage of a snapshot's own directory (not its parents).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// One snapshot's stored metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    /// Name of the parent snapshot, empty for none.
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created: Timestamp,
    pub updated: Timestamp,
    /// Measured at commit; zero for active and view snapshots.
    #[serde(default)]
    pub usage: Usage,
    /// Committed by the importer without its data: the chain ID of the
    /// archived layer its directory is to be filled from before first use
    /// (`snapshot::remote::lazy`). Not a label, so no label update can lose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

/// A snapshot as the API shows it: its name and record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub record: Record,
}

/// What a mount needs: the snapshot's id and kind, and the ids of its parents,
/// nearest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub id: u64,
    pub kind: Kind,
    pub parent_ids: Vec<u64>,
}

impl crate::snapshot::filter::Fields for Info {
    fn field(&self, path: &[String]) -> Option<&str> {
        match path.first().map(String::as_str)? {
            "kind" => Some(self.record.kind.as_str()),
            "name" => Some(&self.name),
            "parent" => Some(&self.record.parent),
            "labels" => self
                .record
                .labels
                .get(&path[1..].join("."))
                .map(String::as_str),
            _ => None,
        }
    }
}

/// Checks labels the way containerd does, and drops empty values (containerd
/// never stores a label whose value is empty).
pub fn clean_labels(
    labels: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, SnapshotError> {
    let mut out = BTreeMap::new();
    for (k, v) in labels {
        if k.is_empty() {
            return Err(SnapshotError::InvalidArgument(
                "label key must not be empty".into(),
            ));
        }
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(SnapshotError::InvalidArgument(format!(
                "label key and value greater than maximum size ({MAX_LABEL_BYTES} bytes), key: {}",
                k.chars().take(64).collect::<String>()
            )));
        }
        if !v.is_empty() {
            out.insert(k, v);
        }
    }
    Ok(out)
}

pub(super) fn decode(name: &str, bytes: &[u8]) -> Result<Record, SnapshotError> {
    serde_json::from_slice(bytes).map_err(|e| SnapshotError::Corrupt {
        key: name.to_string(),
        reason: e.to_string(),
    })
}

pub(super) fn encode(record: &Record) -> Vec<u8> {
    serde_json::to_vec(record).expect("a Record always serializes")
}

pub(super) fn get_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<Record>, SnapshotError> {
    match table.get(name)? {
        Some(v) => Ok(Some(decode(name, v.value())?)),
        None => Ok(None),
    }
}

pub(super) fn require(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Record, SnapshotError> {
    get_in(table, name)?.ok_or_else(|| SnapshotError::NotFound(format!("snapshot {name:?}")))
}

pub(super) fn chain_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Chain, SnapshotError> {
    let record = require(table, name)?;
    let mut parent_ids = Vec::new();
    let mut parent = record.parent.clone();
    while !parent.is_empty() {
        let p = get_in(table, &parent)?.ok_or_else(|| {
            SnapshotError::NotFound(format!("parent {parent:?} of snapshot {name:?}"))
        })?;
        parent_ids.push(p.id);
        parent = p.parent;
    }
    Ok(Chain {
        id: record.id,
        kind: record.kind,
        parent_ids,
    })
}

pub(super) fn list_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<Info>, SnapshotError> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let name = k.value().to_string();
        let record = decode(&name, v.value())?;
        out.push(Info { name, record });
    }
    Ok(out)
}
