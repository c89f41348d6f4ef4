//! The metadata store against a temporary database.

use std::collections::BTreeMap;

use super::*;

fn store() -> (tempfile::TempDir, MetaStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
    (dir, store)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn create_commit_chain_remove() {
    let (_d, s) = store();
    let w = s.write().unwrap();
    let a = w
        .create(Kind::Active, "a", "", labels(&[]), Usage::default())
        .unwrap();
    assert_eq!(a.parent_ids, Vec::<u64>::new());
    w.commit_active(
        "a",
        "c1",
        labels(&[("x", "1")]),
        Usage { size: 5, inodes: 1 },
    )
    .unwrap();
    let b = w
        .create(Kind::Active, "b", "c1", labels(&[]), Usage::default())
        .unwrap();
    assert_eq!(b.parent_ids, vec![a.id]);
    w.commit_active("b", "c2", labels(&[]), Usage::default())
        .unwrap();
    let v = w
        .create(Kind::View, "v", "c2", labels(&[]), Usage::default())
        .unwrap();
    assert_eq!(v.parent_ids, vec![b.id, a.id], "nearest parent first");
    w.commit().unwrap();

    let r = s.read().unwrap();
    assert_eq!(r.get("c1").unwrap().labels, labels(&[("x", "1")]));
    assert_eq!(r.get("c1").unwrap().usage.size, 5);
    assert!(r.get("a").unwrap_err().is_not_found());
    assert_eq!(r.chain("v").unwrap().parent_ids, vec![b.id, a.id]);
    drop(r);

    let w = s.write().unwrap();
    assert!(matches!(
        w.remove("c2"),
        Err(SnapshotError::FailedPrecondition(_))
    ));
    w.remove("v").unwrap();
    w.remove("c2").unwrap();
    w.remove("c1").unwrap();
    w.commit().unwrap();
    assert!(s.read().unwrap().list().unwrap().is_empty());
}

#[test]
fn errors_follow_containerd() {
    let (_d, s) = store();
    let w = s.write().unwrap();
    assert!(w
        .create(Kind::Active, "a", "nope", labels(&[]), Usage::default())
        .unwrap_err()
        .is_not_found());
    w.create(Kind::Active, "a", "", labels(&[]), Usage::default())
        .unwrap();
    assert!(w
        .create(Kind::View, "a", "", labels(&[]), Usage::default())
        .unwrap_err()
        .is_already_exists());
    assert!(matches!(
        w.create(Kind::Active, "b", "a", labels(&[]), Usage::default()),
        Err(SnapshotError::InvalidArgument(_))
    ));
    w.create(Kind::View, "v", "", labels(&[]), Usage::default())
        .unwrap();
    assert!(matches!(
        w.commit_active("v", "c", labels(&[]), Usage::default()),
        Err(SnapshotError::FailedPrecondition(_))
    ));
    assert!(w
        .commit_active("zz", "c", labels(&[]), Usage::default())
        .unwrap_err()
        .is_not_found());
    assert!(w
        .commit_active("a", "v", labels(&[]), Usage::default())
        .unwrap_err()
        .is_already_exists());
    assert!(w.remove("zz").unwrap_err().is_not_found());
    assert!(matches!(
        w.update("a", &labels(&[]), &["parent".into()]),
        Err(SnapshotError::InvalidArgument(_))
    ));
}

#[test]
fn update_labels_like_containerd() {
    let (_d, s) = store();
    let w = s.write().unwrap();
    w.create(
        Kind::Active,
        "a",
        "",
        labels(&[("keep", "k")]),
        Usage::default(),
    )
    .unwrap();
    let r = w
        .update("a", &labels(&[("l1", "v1"), ("l2", "v2")]), &[])
        .unwrap();
    assert_eq!(r.labels, labels(&[("l1", "v1"), ("l2", "v2")]));
    let r = w
        .update(
            "a",
            &labels(&[("l1", "updated"), ("l4", "v4")]),
            &["labels.l1".into(), "labels.l2".into()],
        )
        .unwrap();
    assert_eq!(r.labels, labels(&[("l1", "updated")]));
    let r = w
        .update("a", &labels(&[("l4", "v4")]), &["labels".into()])
        .unwrap();
    assert_eq!(r.labels, labels(&[("l4", "v4")]));
}

#[test]
fn a_rolled_back_transaction_leaves_nothing() {
    let (_d, s) = store();
    {
        let w = s.write().unwrap();
        w.create(Kind::Active, "a", "", labels(&[]), Usage::default())
            .unwrap();
    }
    assert!(s.read().unwrap().list().unwrap().is_empty());
}

#[test]
fn labels_are_validated() {
    assert!(clean_labels([("".to_string(), "x".to_string())]).is_err());
    assert!(clean_labels([("k".to_string(), "x".repeat(4096))]).is_err());
    let l = clean_labels([
        ("a".to_string(), "".to_string()),
        ("b".to_string(), "1".to_string()),
    ])
    .unwrap();
    assert_eq!(l, labels(&[("b", "1")]));
}
