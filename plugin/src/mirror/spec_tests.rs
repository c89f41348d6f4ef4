//! The OCI distribution spec's conformance cases for what a read-only
//! registry serves: the "pull" and "content discovery" workflows of the
//! spec's own suite (`conformance/01_pull_test.go`, `03_discovery_test.go`),
//! case by case, against the mirror in-process, for an archived OCI image (a
//! multi-arch index and its two manifests, several tags) and a docker-save
//! image (its synthesized manifest), restated with the spec's
//! expectations; where the spec allows two answers, the comment says which
//! one the mirror gives. The suite itself (Go, from the module proxy) runs
//! against the real daemon in `integration/distspec.sh`: these cases run
//! in-process with every `cargo test`, that one once per `scripts/test.sh`.

use axum::http::StatusCode;
use bytes::Bytes;

use super::tests::{call, mirror_over, Answer};
use crate::digest::Digest;
use crate::testsupport::*;

/// One archived repository as the suite sees a registry's.
struct Subject {
    /// The repository path after `/v2/`, with its `?ns=`.
    name: &'static str,
    ns: &'static str,
    /// Its tags, and the manifest (or index) each names.
    tags: Vec<(&'static str, Digest)>,
    /// Manifests (and indexes) by digest, with their bytes.
    manifests: Vec<(Digest, Bytes)>,
    /// Blobs (configs, layers) by digest, with their bytes.
    blobs: Vec<(Digest, Bytes)>,
}

fn get(a: &Answer, header: &str) -> String {
    a.header(header).to_string()
}

async fn run_cases(router: &axum::Router, s: &Subject) {
    let (name, ns) = (s.name, s.ns);
    let missing = Digest::of(b"not in any archive");
    let case = |what: &str| format!("{name}: {what}");

    // Pull blobs.
    let a = call(
        router,
        "HEAD",
        &format!("/v2/{name}/blobs/{missing}{ns}"),
        &[],
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::NOT_FOUND,
        "{}",
        case("HEAD nonexistent blob: 404")
    );
    for (d, bytes) in &s.blobs {
        let uri = format!("/v2/{name}/blobs/{d}{ns}");
        let a = call(router, "HEAD", &uri, &[]).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            case("HEAD existing blob: 200")
        );
        assert_eq!(get(&a, "docker-content-digest"), d.to_string());
        assert_eq!(get(&a, "content-length"), bytes.len().to_string());
        let a = call(router, "GET", &uri, &[]).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            case("GET existing blob: 200")
        );
        assert_eq!(a.body, *bytes, "{}", case("GET existing blob: its bytes"));
    }
    let a = call(
        router,
        "GET",
        &format!("/v2/{name}/blobs/{missing}{ns}"),
        &[],
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::NOT_FOUND,
        "{}",
        case("GET nonexistent blob: 404")
    );
    assert_eq!(a.error_code(), "BLOB_UNKNOWN");

    // Pull manifests, by digest and by tag.
    let a = call(
        router,
        "HEAD",
        &format!("/v2/{name}/manifests/{missing}{ns}"),
        &[],
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::NOT_FOUND,
        "{}",
        case("HEAD nonexistent manifest: 404")
    );
    let a = call(
        router,
        "GET",
        &format!("/v2/{name}/manifests/{missing}{ns}"),
        &[],
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::NOT_FOUND,
        "{}",
        case("GET nonexistent manifest: 404")
    );
    assert_eq!(a.error_code(), "MANIFEST_UNKNOWN");
    let by_digest = s
        .manifests
        .iter()
        .map(|(d, b)| (d.to_string(), *d, b.clone()));
    let by_tag = s.tags.iter().map(|(t, d)| {
        let bytes = s.manifests.iter().find(|(m, _)| m == d).unwrap().1.clone();
        (t.to_string(), *d, bytes)
    });
    for (reference, digest, bytes) in by_digest.chain(by_tag) {
        let uri = format!("/v2/{name}/manifests/{reference}{ns}");
        for method in ["HEAD", "GET"] {
            let a = call(router, method, &uri, &[]).await;
            assert_eq!(
                a.status,
                StatusCode::OK,
                "{}",
                case(&format!("{method} manifest {reference}: 200"))
            );
            assert_eq!(get(&a, "docker-content-digest"), digest.to_string());
            assert_eq!(get(&a, "content-length"), bytes.len().to_string());
            if method == "GET" {
                assert_eq!(a.body, bytes, "{}", case("GET manifest: its bytes"));
                assert_eq!(Digest::of(&a.body), digest);
            }
        }
    }

    // Error codes: a malformed digest is a 400 with an OCI error body (the
    // spec accepts 400 or 404; distribution answers 500).
    let a = call(
        router,
        "GET",
        &format!("/v2/{name}/manifests/sha256:totallywrong{ns}"),
        &[],
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::BAD_REQUEST,
        "{}",
        case("malformed digest: 400")
    );
    assert_eq!(a.error_code(), "DIGEST_INVALID");

    // Content discovery: tags sorted, `n` limits, `last` starts after.
    let mut tags: Vec<&str> = s.tags.iter().map(|(t, _)| *t).collect();
    tags.sort();
    let list = |a: &Answer| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["name"], name);
        serde_json::from_value(v["tags"].clone()).unwrap()
    };
    let a = call(router, "GET", &format!("/v2/{name}/tags/list{ns}"), &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", case("list tags: 200"));
    assert_eq!(list(&a), tags, "{}", case("list tags: sorted"));
    let sep = if ns.is_empty() { "?" } else { "&" };
    let a = call(
        router,
        "GET",
        &format!("/v2/{name}/tags/list{ns}{sep}n=1"),
        &[],
    )
    .await;
    assert_eq!(list(&a), tags[..1], "{}", case("list tags: n limits"));
    let a = call(
        router,
        "GET",
        &format!("/v2/{name}/tags/list{ns}{sep}n=10&last={}", tags[0]),
        &[],
    )
    .await;
    assert_eq!(
        list(&a),
        tags[1..],
        "{}",
        case("list tags: last starts after")
    );
}

#[tokio::test]
async fn pull_and_content_discovery_as_the_spec_asks() {
    let dir = tempfile::tempdir().unwrap();
    // An OCI layout: an index of two platform manifests, tagged twice, and
    // one platform manifest tagged on its own.
    let amd = ImageSpec::new(vec![layer_tar(&[("etc/os", b"amd64\n")])]);
    let arm = ImageSpec {
        arch: "arm64",
        variant: Some("v8"),
        ..ImageSpec::new(vec![layer_tar(&[("etc/os", b"arm64\n")])])
    };
    let mut oci = OciLayout::default();
    let (a, b) = (oci.add_image(&amd), oci.add_image(&arm));
    let (index, index_size) = oci.add_index(&[(&amd, &a), (&arm, &b)]);
    for tag in ["1.0", "latest"] {
        oci.tag(
            &format!("example.com/spec/multi:{tag}"),
            index,
            index_size,
            true,
        );
    }
    oci.tag(
        "example.com/spec/multi:amd64-only",
        a.manifest,
        a.manifest_size,
        false,
    );
    write(
        dir.path(),
        "oci.tar.zst",
        &wrap(&oci.to_tar(), Wrap::Seekable),
    );
    // A docker-save archive of one image, two tags.
    let saved = ImageSpec {
        compression: LayerCompression::None,
        ..ImageSpec::new(vec![layer_tar(&[("etc/saved", b"saved\n")])])
    };
    let save = docker_save(
        &saved,
        &["example.com/spec/saved:a", "example.com/spec/saved:b"],
    );
    write(dir.path(), "saved.tar.gz", &wrap(&save, Wrap::Gzip));
    let (catalog, router) = mirror_over(dir.path());

    let bytes = |d: &Digest| Bytes::from(oci.blobs[d].clone());
    let oci_subject = Subject {
        name: "spec/multi",
        ns: "?ns=example.com",
        tags: vec![
            ("1.0", index),
            ("latest", index),
            ("amd64-only", a.manifest),
        ],
        manifests: [index, a.manifest, b.manifest]
            .iter()
            .map(|d| (*d, bytes(d)))
            .collect(),
        blobs: [a.config, b.config, a.layers[0], b.layers[0]]
            .iter()
            .map(|d| (*d, bytes(d)))
            .collect(),
    };
    run_cases(&router, &oci_subject).await;

    // docker-save: the manifest the daemon synthesized, and its blobs.
    let manifest = catalog
        .resolve("example.com/spec/saved:a")
        .unwrap()
        .entry
        .digest;
    let manifest_bytes = catalog.document(&manifest).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let blobs = doc["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&doc["config"]])
        .map(|d| {
            let digest: Digest = d["digest"].as_str().unwrap().parse().unwrap();
            let a = &digest;
            let bytes = match catalog.document(a) {
                Some(doc) => doc,
                None => Bytes::from(saved.layers[0].clone()),
            };
            (digest, bytes)
        })
        .collect();
    let saved_subject = Subject {
        // Without ns: the name is a whole reference, as for a client that
        // talks to the mirror directly.
        name: "example.com/spec/saved",
        ns: "",
        tags: vec![("a", manifest), ("b", manifest)],
        manifests: vec![(manifest, manifest_bytes)],
        blobs,
    };
    run_cases(&router, &saved_subject).await;
}
