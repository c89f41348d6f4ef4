//! Catalog tests over generated archives of every container and layout.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::digest::Digest;
use crate::testsupport::*;

fn open(dirs: &[&Path]) -> Arc<Catalog> {
    Catalog::open(CatalogOptions {
        dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
        settle: Duration::ZERO,
        cache_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap()
}

fn two_layer_spec() -> ImageSpec {
    ImageSpec::new(vec![
        layer_tar(&[("bin/busybox", &busybox_bytes())]),
        layer_tar(&[("etc/hello", b"hello\n"), ("etc/.wh.gone", b"")]),
    ])
}

fn read_all(c: &Catalog, d: &Digest) -> Vec<u8> {
    let mut out = Vec::new();
    c.open_blob(d).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn every_container_and_layout_is_indexed() {
    let spec = two_layer_spec();
    let (oci, built) = OciLayout::single("busybox:1.36", &spec);
    let oci_tar = oci.to_tar();
    let save_tar = docker_save(&spec, &["example.com/tools/busybox:1.36"]);
    for w in ALL_WRAPS {
        for (layout, tar) in [("oci", &oci_tar), ("save", &save_tar)] {
            let dir = tempfile::tempdir().unwrap();
            // A misleading extension: detection goes by content.
            write(dir.path(), "bundle.tar", &wrap(tar, w));
            let c = open(&[dir.path()]);
            assert!(c.broken().is_empty(), "{w:?} {layout}: {:?}", c.broken());
            let images = c.images();
            assert_eq!(images.len(), 1, "{w:?} {layout}");
            let img = &images[0].entry;
            assert_eq!(img.platforms, vec!["linux/amd64"]);
            if layout == "oci" {
                assert_eq!(img.name, "docker.io/library/busybox:1.36");
                assert_eq!(img.digest, built.manifest);
                assert!(!img.synthesized);
            } else {
                assert_eq!(img.name, "example.com/tools/busybox:1.36");
                assert!(img.synthesized);
            }
            // Every layer is found by chain ID and reads back as built.
            let chain = spec.chain_ids();
            for (i, chain_id) in chain.iter().enumerate() {
                let l = c
                    .layer(chain_id)
                    .unwrap_or_else(|| panic!("{w:?} {layout}: layer {i}"));
                assert_eq!(l.diff_id, spec.diff_ids()[i]);
                assert_eq!(l.parent, i.checked_sub(1).map(|p| chain[p]));
                let bytes = read_all(&c, &l.digest);
                assert_eq!(Digest::of(&bytes), l.digest);
            }
            assert_eq!(c.image_layers(&chain[1], None).len(), 2);
        }
    }
}

#[test]
fn every_layer_compression_is_indexed() {
    for compression in [
        LayerCompression::None,
        LayerCompression::Gzip,
        LayerCompression::Zstd,
    ] {
        let spec = ImageSpec {
            compression,
            ..two_layer_spec()
        };
        let (oci, _) = OciLayout::single("busybox:1.36", &spec);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "bundle.tar", &oci.to_tar());
        let c = open(&[dir.path()]);
        assert!(c.broken().is_empty(), "{compression:?}: {:?}", c.broken());
        // The diffIDs are those of the uncompressed tars, whatever the blob.
        for (i, chain_id) in spec.chain_ids().iter().enumerate() {
            let l = c
                .layer(chain_id)
                .unwrap_or_else(|| panic!("{compression:?}: layer {i}"));
            assert_eq!(l.diff_id, spec.diff_ids()[i], "{compression:?}");
            assert_eq!(Digest::of(&read_all(&c, &l.digest)), l.digest);
        }
    }
}

#[test]
fn docker_save_manifests_are_deterministic() {
    let spec = ImageSpec {
        compression: LayerCompression::None,
        ..two_layer_spec()
    };
    let save = docker_save(&spec, &["busybox:latest"]);
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    write(d1.path(), "a.tar", &save);
    write(d2.path(), "b.tar.gz", &wrap(&save, Wrap::Gzip));
    let a = open(&[d1.path()]).images();
    let b = open(&[d2.path()]).images();
    assert_eq!(a[0].entry.digest, b[0].entry.digest);
    assert_eq!(a[0].entry.name, "docker.io/library/busybox:latest");
    // The synthesized manifest is served and names the layers by digest.
    let c = open(&[d1.path()]);
    let m: serde_json::Value = serde_json::from_slice(&read_all(&c, &a[0].entry.digest)).unwrap();
    assert_eq!(m["layers"][0]["digest"], spec.diff_ids()[0].to_string());
}

#[test]
fn multi_arch_index_lists_platforms() {
    let amd = ImageSpec::new(vec![layer_tar(&[("a", b"amd64")])]);
    let arm = ImageSpec {
        arch: "arm64",
        variant: Some("v8"),
        ..ImageSpec::new(vec![layer_tar(&[("a", b"arm64")])])
    };
    let mut l = OciLayout::default();
    let ba = l.add_image(&amd);
    let bb = l.add_image(&arm);
    let (idx, n) = l.add_index(&[(&amd, &ba), (&arm, &bb)]);
    l.tag("registry.k8s.io/pause:3.9", idx, n, true);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "multi.tar.zst", &wrap(&l.to_tar(), Wrap::Zstd));
    let c = open(&[dir.path()]);
    let img = &c.images()[0].entry;
    assert_eq!(img.digest, idx);
    assert_eq!(img.platforms, vec!["linux/amd64", "linux/arm64/v8"]);
    assert!(img.media_type.contains("index"));
    assert!(c.layer(&arm.chain_ids()[0]).is_some());
}

#[test]
fn index_with_only_local_platform_present_is_fine() {
    // `ctr export` keeps the whole index but only the local manifests.
    let amd = ImageSpec::new(vec![layer_tar(&[("a", b"amd64")])]);
    let arm = ImageSpec {
        arch: "arm64",
        ..ImageSpec::new(vec![layer_tar(&[("a", b"arm64")])])
    };
    let mut l = OciLayout::default();
    let ba = l.add_image(&amd);
    let bb = l.add_image(&arm);
    let (idx, n) = l.add_index(&[(&amd, &ba), (&arm, &bb)]);
    l.blobs.remove(&bb.manifest);
    l.tag("app:1", idx, n, true);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.tar", &l.to_tar());
    let c = open(&[dir.path()]);
    assert_eq!(c.images()[0].entry.platforms, vec!["linux/amd64"]);
}

#[test]
fn seekable_reads_are_lazy_and_stream_reads_are_cached() {
    // A large incompressible layer first, then a small image.
    let big: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let big_spec = ImageSpec::new(vec![layer_tar(&[("big", &big)])]);
    let small_spec = ImageSpec::new(vec![layer_tar(&[("small", b"tiny file")])]);
    let mut l = OciLayout::default();
    let bb = l.add_image(&big_spec);
    l.tag("big:1", bb.manifest, bb.manifest_size, false);
    let bs = l.add_image(&small_spec);
    l.tag("small:1", bs.manifest, bs.manifest_size, false);
    let tar = l.to_tar();

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "seekable.tar.zst", &wrap(&tar, Wrap::Seekable));
    let c = open(&[dir.path()]);
    let before = c.stats().decompressed();
    let layer = &bs.layers[0];
    read_all(&c, layer);
    let used = c.stats().decompressed() - before;
    assert!(
        used <= 2 * 256 * 1024,
        "seekable: decompressed {used} bytes for a tiny layer"
    );

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "single.tar.zst", &wrap(&tar, Wrap::Zstd));
    let c = open(&[dir.path()]);
    let loc = c.archives()[0].index.blobs[layer];
    let blob_end = loc.offset + loc.size;
    // A one-shot sequential read (a layer being extracted) streams: it never
    // decompresses past the end of the blob.
    let before = c.stats().decompressed();
    read_all(&c, layer);
    let streamed = c.stats().decompressed() - before;
    assert!(
        streamed <= blob_end + 128 * 1024,
        "decompressed {streamed}, blob ends at {blob_end}"
    );
    // Random access (the mirror) fills the cache once; repeated reads,
    // random or sequential, do not decompress again.
    let before = c.stats().decompressed();
    let r = c.blob_reader(layer).unwrap();
    let mut buf = vec![0u8; 100];
    r.read_at(&mut buf, 10).unwrap();
    let filled = c.stats().decompressed() - before;
    assert!(filled <= blob_end + 128 * 1024, "filled with {filled}");
    for _ in 0..3 {
        c.blob_reader(layer).unwrap().read_at(&mut buf, 0).unwrap();
        read_all(&c, layer);
    }
    assert_eq!(
        c.stats().decompressed() - before,
        filled,
        "repeated reads decompressed again"
    );
}

#[test]
fn corrupt_blob_is_never_handed_out_as_good() {
    let big: Vec<u8> = (0..9_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let spec = ImageSpec {
        compression: LayerCompression::None,
        ..ImageSpec::new(vec![layer_tar(&[("big", &big)])])
    };
    let (l, b) = OciLayout::single("big:1", &spec);
    let mut tar = l.to_tar();
    let dir = tempfile::tempdir().unwrap();
    let c0 = {
        write(dir.path(), "x.tar", &tar);
        open(&[dir.path()])
    };
    let loc = c0.archives()[0].index.blobs[&b.layers[0]];
    tar[(loc.offset + 5_000_000) as usize] ^= 0xff;
    for w in [Wrap::Tar, Wrap::Zstd, Wrap::Seekable] {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "x.tar", &wrap(&tar, w));
        let c = open(&[dir.path()]);
        // Caught when opened (a cached fill checks it) or at the end of the read.
        let msg = match c.open_blob(&b.layers[0]) {
            Err(e) => e.to_string(),
            Ok(mut r) => r.read_to_end(&mut Vec::new()).unwrap_err().to_string(),
        };
        assert!(
            msg.contains(&b.layers[0].to_string()) && msg.contains(&path.display().to_string()),
            "{w:?}: {msg}"
        );
        assert!(
            c.blob_reader(&b.layers[0]).is_err(),
            "{w:?}: random access reader handed out"
        );
        let failures = verify::verify_archive(
            &c.archives()[0].index,
            &std::fs::File::open(&path).unwrap(),
            &mut |_| {},
        );
        assert_eq!(failures.len(), 1, "{w:?}: {failures:?}");
        assert_eq!(failures[0].digest, Some(b.layers[0]));
    }
}

#[test]
fn verify_checks_diff_ids() {
    // A layer whose config claims another diffID.
    let spec = two_layer_spec();
    let (mut l, b) = OciLayout::single("x:1", &spec);
    let good = l.to_tar();
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "good.tar", &good);
    let c = open(&[dir.path()]);
    assert!(verify::verify_archive(
        &c.archives()[0].index,
        &std::fs::File::open(&p).unwrap(),
        &mut |_| {}
    )
    .is_empty());

    let lying = ImageSpec {
        layers: vec![spec.layers[0].clone(), layer_tar(&[("other", b"x")])],
        ..spec.clone()
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "os": "linux", "architecture": "amd64",
        "rootfs": {"type": "layers", "diff_ids": lying.diff_ids().iter().map(|d| d.to_string()).collect::<Vec<_>>()},
    }))
    .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&l.blobs[&b.manifest]).unwrap();
    let (cd, cn) = l.add_blob(config);
    let mut m = manifest.clone();
    m["config"]["digest"] = cd.to_string().into();
    m["config"]["size"] = cn.into();
    let (md, mn) = l.add_blob(serde_json::to_vec(&m).unwrap());
    l.index.clear();
    l.tag("x:1", md, mn, false);
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "lying.tar", &l.to_tar());
    let c = open(&[dir.path()]);
    let failures = verify::verify_archive(
        &c.archives()[0].index,
        &std::fs::File::open(&p).unwrap(),
        &mut |_| {},
    );
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].digest, Some(b.layers[1]));
    assert!(failures[0].reason.contains("diffID"));
}

#[test]
fn persisted_index_is_reused_until_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (l, _) = OciLayout::single("a:1", &two_layer_spec());
    let p = write(dir.path(), "a.tar", &l.to_tar());
    let opts = CatalogOptions {
        dirs: vec![dir.path().into()],
        state_dir: Some(state.path().into()),
        settle: Duration::ZERO,
        ..Default::default()
    };
    let c = Catalog::open(opts.clone()).unwrap();
    assert_eq!(c.images().len(), 1);
    let persisted: Vec<_> = std::fs::read_dir(state.path().join("index"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(persisted.len(), 1);
    // Doctor the persisted index: a restart must use it, not rescan.
    let f = persisted[0].path();
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("docker.io/library/a:1", "docker.io/library/from-index:1");
    std::fs::write(&f, text).unwrap();
    let c = Catalog::open(opts.clone()).unwrap();
    assert_eq!(c.images()[0].entry.name, "docker.io/library/from-index:1");
    // A changed file is indexed again.
    let (l, _) = OciLayout::single("b:1", &two_layer_spec());
    std::fs::write(&p, l.to_tar()).unwrap();
    let c = Catalog::open(opts).unwrap();
    assert_eq!(c.images()[0].entry.name, "docker.io/library/b:1");
}

#[test]
fn newest_archive_wins_a_shared_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (old, _) = OciLayout::single("app:1", &ImageSpec::new(vec![layer_tar(&[("v", b"1")])]));
    let (new, nb) = OciLayout::single("app:1", &ImageSpec::new(vec![layer_tar(&[("v", b"2")])]));
    let p_new = dir.path().join("a-new.tar");
    std::fs::write(&p_new, new.to_tar()).unwrap();
    let p_old = write(dir.path(), "z-old.tar", &old.to_tar());
    let mtime = std::time::SystemTime::now() - Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&p_new)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let c = open(&[dir.path()]);
    let img = c.resolve("docker.io/library/app:1").unwrap();
    assert_eq!(img.entry.digest, nb.manifest);
    assert_eq!(img.archive, p_new);
    assert_ne!(img.archive, p_old);
}

/// Waits (bounded) for `cond`; not a timing assertion, a deadline.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn watcher_follows_adds_replaces_deletes_and_waits_for_copies() {
    let dir = tempfile::tempdir().unwrap();
    let c = Catalog::open(CatalogOptions {
        dirs: vec![dir.path().into()],
        settle: Duration::from_millis(700),
        // Short, so the deletion below takes effect within the test; the
        // watcher looks again when it expires, not at its next poll.
        removal_grace: Duration::from_millis(1500),
        ..Default::default()
    })
    .unwrap();
    let _w = c.watch();
    let name = "docker.io/library/app:1";
    let (v1, b1) = OciLayout::single("app:1", &ImageSpec::new(vec![layer_tar(&[("v", b"1")])]));
    std::fs::write(dir.path().join("app.tar"), v1.to_tar()).unwrap();
    eventually("added archive listed", || {
        c.resolve(name)
            .is_some_and(|i| i.entry.digest == b1.manifest)
    });

    // Replaced by a newer bundle (written aside, renamed in, as installers do).
    let (v2, b2) = OciLayout::single("app:1", &ImageSpec::new(vec![layer_tar(&[("v", b"2")])]));
    std::fs::write(dir.path().join(".app.tar.tmp"), v2.to_tar()).unwrap();
    std::fs::rename(dir.path().join(".app.tar.tmp"), dir.path().join("app.tar")).unwrap();
    eventually("replacement wins", || {
        c.resolve(name)
            .is_some_and(|i| i.entry.digest == b2.manifest)
    });

    // A file copied slowly is not indexed as broken while it is written.
    let (v3, _) = OciLayout::single("slow:1", &two_layer_spec());
    let bytes = wrap(&v3.to_tar(), Wrap::Gzip);
    let slow = dir.path().join("slow.tar.gz");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&slow).unwrap();
        for chunk in bytes.chunks(bytes.len() / 6 + 1) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                c.broken().is_empty(),
                "half-copied file reported broken: {:?}",
                c.broken()
            );
        }
    }
    eventually("copied archive listed", || {
        c.resolve("docker.io/library/slow:1").is_some()
    });
    assert!(c.broken().is_empty());

    std::fs::remove_file(dir.path().join("app.tar")).unwrap();
    eventually("deleted archive missing", || c.missing_count() == 1);
    assert!(c.resolve(name).is_some(), "gone before the grace");
    eventually("deleted archive gone", || c.resolve(name).is_none());
    assert_eq!(c.missing_count(), 0);
}

#[test]
fn a_truncated_file_left_alone_is_broken_then_healed() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = OciLayout::single("a:1", &two_layer_spec());
    let full = wrap(&l.to_tar(), Wrap::Zstd);
    let p = write(dir.path(), "a.tar.zst", &full[..full.len() / 2]);
    let c = open(&[dir.path()]);
    assert_eq!(c.broken().len(), 1);
    assert!(c.images().is_empty());
    std::fs::write(&p, &full).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(30);
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(old)
        .unwrap();
    c.rescan();
    assert!(c.broken().is_empty());
    assert_eq!(c.images().len(), 1);
}

/// Each hostile input gives an error naming the file and the trouble, and
/// leaves a healthy archive beside it listed.
#[test]
fn hostile_archives_are_contained() {
    let (good, _) = OciLayout::single("good:1", &two_layer_spec());
    let good_tar = good.to_tar();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();

    let z = wrap(&good_tar, Wrap::Zstd);
    cases.push((
        "truncated.tar.zst",
        z[..z.len() * 2 / 3].to_vec(),
        "reading the tar stream",
    ));
    let mut bad_header = good_tar.clone();
    bad_header[600..700].fill(0x41);
    bad_header[1024..1124].fill(0x41);
    cases.push(("bad-header.tar", bad_header, "tar"));
    let t = layer_tar(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", b"{\"manifests\": [garbage"),
    ]);
    cases.push(("garbage-json.tar", t, "index.json"));
    cases.push((
        "nothing.tar",
        layer_tar(&[("hello", b"world")]),
        "neither index.json",
    ));
    cases.push((
        "noise.tar.gz",
        vec![0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        "reading the tar stream",
    ));
    cases.push((
        "random.bin",
        (0..4096u32).map(|i| (i * 31 % 253) as u8).collect(),
        "not an image archive",
    ));
    // A tar header claiming a terabyte.
    let mut huge = tar::Header::new_gnu();
    huge.set_size(1 << 40);
    huge.set_path("blobs/sha256/0000000000000000000000000000000000000000000000000000000000000000")
        .unwrap();
    huge.set_cksum();
    let mut absurd = huge.as_bytes().to_vec();
    absurd.extend_from_slice(&[0u8; 4096]);
    cases.push(("absurd.tar", absurd, "reading the tar stream"));

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.tar", &good_tar);
    for (name, bytes, _) in &cases {
        write(dir.path(), name, bytes);
    }
    let c = open(&[dir.path()]);
    assert_eq!(c.images().len(), 1, "the healthy archive is still listed");
    let broken = c.broken();
    for (name, _, want) in &cases {
        let (path, reason) = broken
            .iter()
            .find(|(p, _)| p.file_name().unwrap() == *name)
            .unwrap_or_else(|| panic!("{name} not reported: {broken:?}"));
        let msg = format!("{}: {reason}", path.display());
        assert!(msg.contains(name) && reason.contains(want), "{name}: {msg}");
    }
}

#[test]
fn missing_blobs_and_deep_nesting_are_problems_not_crashes() {
    // A manifest whose layer blob is missing: listed, with the problem named.
    let spec = two_layer_spec();
    let (mut l, b) = OciLayout::single("partial:1", &spec);
    l.blobs.remove(&b.layers[1]);
    // A manifest whose config is missing: not listed, named.
    let other = ImageSpec::new(vec![layer_tar(&[("o", b"o")])]);
    let bo = l.add_image(&other);
    l.blobs.remove(&bo.config);
    l.tag("noconfig:1", bo.manifest, bo.manifest_size, false);
    // Indexes nested far too deep.
    let leaf = ImageSpec::new(vec![layer_tar(&[("d", b"d")])]);
    let bl = l.add_image(&leaf);
    let (mut d, mut n) = (bl.manifest, bl.manifest_size);
    for _ in 0..20 {
        let idx = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d.to_string(), "size": n}]});
        (d, n) = l.add_blob(serde_json::to_vec(&idx).unwrap());
    }
    l.tag("deep:1", d, n, true);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.tar", &l.to_tar());
    let c = open(&[dir.path()]);
    let names: Vec<String> = c.images().into_iter().map(|i| i.entry.name).collect();
    assert_eq!(names, vec!["docker.io/library/partial:1"]);
    let problems = c.archives()[0].index.problems.join("\n");
    assert!(problems.contains(&b.layers[1].to_string()), "{problems}");
    assert!(problems.contains(&bo.config.to_string()), "{problems}");
    assert!(problems.contains("nested deeper"), "{problems}");
    assert!(c.layer(&spec.chain_ids()[0]).is_some());
    assert!(
        c.layer(&spec.chain_ids()[1]).is_none(),
        "a missing blob is never offered"
    );
}

#[test]
fn prefetch_lists_only_the_image_being_pulled() {
    let base = layer_tar(&[("bin/busybox", &busybox_bytes())]);
    let go = ImageSpec::new(vec![base.clone(), layer_tar(&[("go", b"go")])]);
    let llvm = ImageSpec::new(vec![base, layer_tar(&[("llvm", b"llvm")])]);
    let mut l = OciLayout::default();
    let bg = l.add_image(&go);
    l.tag("go:1", bg.manifest, bg.manifest_size, false);
    let bl = l.add_image(&llvm);
    l.tag("llvm:1", bl.manifest, bl.manifest_size, false);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bundle.tar", &l.to_tar());
    let c = open(&[dir.path()]);
    let chains =
        |v: Vec<crate::catalog::LayerRef>| v.into_iter().map(|l| l.chain_id).collect::<Vec<_>>();
    let shared = go.chain_ids()[0];
    // The base is in both images: without a hint, nothing beyond it.
    assert!(c.image_layers(&shared, None).is_empty());
    // CRI names the manifest: exactly that image's layers.
    assert_eq!(
        chains(c.image_layers(&shared, Some(&bg.manifest))),
        go.chain_ids()
    );
    assert_eq!(
        chains(c.image_layers(&shared, Some(&bl.manifest))),
        llvm.chain_ids()
    );
    // A layer of one image only needs no hint.
    assert_eq!(
        chains(c.image_layers(&go.chain_ids()[1], None)),
        go.chain_ids()
    );
    // A hint that does not contain the layer gives nothing.
    assert!(c
        .image_layers(&go.chain_ids()[1], Some(&bl.manifest))
        .is_empty());
}

/// The newer of two archives holding a layer has bad bytes (one compressed
/// stream, so the blob is filled into the cache by a pass, checked on the
/// way): the fill fails, the copy is marked bad, and the same open reads
/// the older archive's good copy.
#[test]
fn a_stream_that_fails_verification_marks_the_copy_and_the_next_open_falls_back() {
    // Larger than a document, so indexing does not check it.
    let big: Vec<u8> = (0..9_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let spec = ImageSpec {
        compression: LayerCompression::None,
        ..ImageSpec::new(vec![layer_tar(&[("big", &big)])])
    };
    let (good, built) = OciLayout::single("busybox:1.36", &spec);
    let digest = built.layers[0];
    let mut bad = good.clone();
    bad.blobs.get_mut(&digest).unwrap()[4096] ^= 0xff;
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "a.tar.zst", &wrap(&good.to_tar(), Wrap::Zstd));
    let new = write(dir.path(), "b.tar.zst", &wrap(&bad.to_tar(), Wrap::Zstd));
    let now = std::time::SystemTime::now();
    for (p, age) in [(&old, 3600), (&new, 60)] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(now - Duration::from_secs(age))
            .unwrap();
    }
    let c = open(&[dir.path()]);
    assert!(c.broken().is_empty(), "{:?}", c.broken());
    assert_eq!(read_all(&c, &digest), good.blobs[&digest]);
    assert!(c.copy_is_bad(&new, &digest));
    // Random access falls back at once.
    let reader = c.blob_reader(&digest).unwrap();
    let mut buf = vec![0u8; reader.size() as usize];
    crate::blob::SequentialReader::new(reader)
        .read_exact(&mut buf)
        .unwrap();
    assert_eq!(buf, good.blobs[&digest]);
    assert!(!c.copy_is_bad(&old, &digest));
}

/// k3s keeps image lists beside its archives: they are read as lists,
/// never indexed (or reported) as broken archives; and a scan that changes
/// what the archives hold tells the importer.
#[test]
fn image_lists_are_lists_not_broken_archives() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, _) = OciLayout::single("busybox:1.36", &two_layer_spec());
    write(dir.path(), "bundle.tar", &oci.to_tar());
    write(
        dir.path(),
        "k3s-images.txt",
        b"# k3s airgap list\ndocker.io/rancher/mirrored-pause:3.6\n\n  registry.k8s.io/coredns/coredns:v1.11.1  # dns\ndocker.io/rancher/mirrored-pause:3.6\n",
    );
    let c = open(&[dir.path()]);
    assert!(c.broken().is_empty(), "{:?}", c.broken());
    assert_eq!(c.images().len(), 1);
    let listed: Vec<String> = c.image_lists().into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        listed,
        [
            "docker.io/rancher/mirrored-pause:3.6",
            "registry.k8s.io/coredns/coredns:v1.11.1"
        ]
    );

    let changes = c.subscribe();
    let before = *changes.borrow();
    c.rescan();
    assert_eq!(*changes.borrow(), before, "nothing changed, nobody woken");
    std::fs::remove_file(dir.path().join("bundle.tar")).unwrap();
    c.rescan();
    assert!(
        *changes.borrow() > before,
        "an archive removed wakes the importer"
    );
}

/// `airgap_archive_read_bytes_total` counts the bytes read from a plain tar
/// archive, not the whole blob per reader opened.
#[test]
fn plain_tar_reads_count_the_bytes_read() {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let spec = ImageSpec::new(vec![layer_tar(&[("big", &big)])]);
    let (oci, built) = OciLayout::single("big:1", &spec);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "plain.tar", &wrap(&oci.to_tar(), Wrap::Tar));
    let c = open(&[dir.path()]);
    let layer = &built.layers[0];
    let read = || c.stats().read.load(std::sync::atomic::Ordering::Relaxed);
    // The first reader checks the whole blob once: every byte read.
    let before = read();
    let r = c.blob_reader(layer).unwrap();
    assert_eq!(read() - before, r.size());
    // Later readers (checked already) read only what they are asked for.
    let before = read();
    let mut buf = vec![0u8; 1000];
    for _ in 0..5 {
        let r = c.blob_reader(layer).unwrap();
        assert_eq!(r.read_at(&mut buf[..10], 5).unwrap(), 10);
    }
    assert_eq!(read() - before, 50);
    // A sequential read of the whole blob counts it once.
    let before = read();
    let n = read_all(&c, layer).len() as u64;
    assert_eq!(read() - before, n);
}

/// Stopping during the first scan of a large archive is prompt: indexing
/// gives up (the watcher thread joins at once), lookups waiting for the
/// first scan return, and the archive is neither indexed nor broken.
#[test]
fn shutdown_stops_a_slow_first_scan_and_wakes_lookups() {
    let dir = tempfile::tempdir().unwrap();
    write_slow_to_index_archive(&dir.path().join("slow.tar.zst"), 4);
    let catalog = Catalog::empty(CatalogOptions {
        dirs: vec![dir.path().to_path_buf()],
        settle: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    let watch = catalog.watch();
    let lookup = {
        let catalog = catalog.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let found = catalog.resolve("docker.io/library/busybox:latest");
            (found.is_none(), started.elapsed())
        })
    };
    // Indexing is under way (it takes minutes) and the lookup waits.
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        !lookup.is_finished(),
        "the lookup did not wait for the scan"
    );
    let stopping = Instant::now();
    catalog.shutdown();
    let (none, waited) = lookup.join().unwrap();
    assert!(none);
    assert!(waited < Duration::from_secs(30), "lookup waited {waited:?}");
    drop(watch);
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    assert_eq!(catalog.archive_counts(), (0, 0));
}

#[test]
fn plain_blobs_are_uncompressed_layers_of_uncompressed_archives() {
    let spec = ImageSpec {
        compression: LayerCompression::None,
        ..two_layer_spec()
    };
    let gz = two_layer_spec();
    let (oci, _) = OciLayout::single("busybox:1.36", &spec);
    let (oci_gz, _) = OciLayout::single("busybox:1.36", &gz);
    let save = docker_save(&spec, &["busybox:1.36"]);
    for (what, tar, plain) in [
        ("oci", oci.to_tar(), true),
        ("oci with gzip layers", oci_gz.to_tar(), false),
        ("docker-save", save, true),
    ] {
        for w in [Wrap::Tar, Wrap::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let path = write(dir.path(), "bundle.tar", &wrap(&tar, w));
            let c = open(&[dir.path()]);
            let file = std::fs::read(&path).unwrap();
            for (layer, chain) in spec.layers.iter().zip(spec.chain_ids()) {
                let l = c.layer(&chain).unwrap();
                match c.plain_blob(&l.digest) {
                    Some(p) => {
                        assert!(plain && w == Wrap::Tar, "{what} {w:?}");
                        assert_eq!(p.path, path);
                        assert_eq!(p.offset % 512, 0);
                        let at = p.offset as usize;
                        assert_eq!(&file[at..at + p.size as usize], &layer[..], "{what}");
                    }
                    None => assert!(!(plain && w == Wrap::Tar), "{what} {w:?}"),
                }
            }
        }
    }
}
