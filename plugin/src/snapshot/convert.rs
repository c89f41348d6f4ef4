//! containerd's wire types from the snapshotter's native ones, all in one
//! place (as rust-extensions' `snapshots/src/convert.rs`). Requests need no
//! conversion: keys, names, labels and filters arrive as the native API
//! takes them.

use super::meta::Timestamp;
use super::proto::containerd::services::snapshots::v1 as api;
use super::proto::containerd::types as types_api;
use super::{Info, Kind, Mount, Usage};

impl From<Mount> for types_api::Mount {
    fn from(m: Mount) -> Self {
        types_api::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        }
    }
}

impl From<Kind> for api::Kind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::View => api::Kind::View,
            Kind::Active => api::Kind::Active,
            Kind::Committed => api::Kind::Committed,
        }
    }
}

impl From<Timestamp> for prost_types::Timestamp {
    fn from(t: Timestamp) -> Self {
        prost_types::Timestamp {
            seconds: t.seconds,
            nanos: t.nanos as i32,
        }
    }
}

impl From<Info> for api::Info {
    fn from(info: Info) -> Self {
        api::Info {
            name: info.name,
            parent: info.record.parent,
            kind: api::Kind::from(info.record.kind) as i32,
            created_at: Some(info.record.created.into()),
            updated_at: Some(info.record.updated.into()),
            labels: info.record.labels.into_iter().collect(),
        }
    }
}

impl From<Usage> for api::UsageResponse {
    fn from(usage: Usage) -> Self {
        api::UsageResponse {
            size: usage.size,
            inodes: usage.inodes,
        }
    }
}

/// Mounts as a response carries them.
pub fn mounts(mounts: Vec<Mount>) -> Vec<types_api::Mount> {
    mounts.into_iter().map(Into::into).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::snapshot::meta::Record;

    #[test]
    fn info_keeps_every_field() {
        let info = Info {
            name: "k8s.io/3/sha256:abc".into(),
            record: Record {
                id: 7,
                kind: Kind::Committed,
                parent: "k8s.io/2/sha256:def".into(),
                labels: BTreeMap::from([("a".into(), "b".into())]),
                created: Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                },
                updated: Timestamp {
                    seconds: 1_700_000_001,
                    nanos: 999_999_999,
                },
                usage: Usage::default(),
                pending: None,
            },
        };
        let api = api::Info::from(info);
        assert_eq!(api.name, "k8s.io/3/sha256:abc");
        assert_eq!(api.parent, "k8s.io/2/sha256:def");
        assert_eq!(api.kind, api::Kind::Committed as i32);
        assert_eq!(api.labels["a"], "b");
        assert_eq!(
            api.created_at,
            Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5
            })
        );
        assert_eq!(api.updated_at.unwrap().nanos, 999_999_999);
    }
}
