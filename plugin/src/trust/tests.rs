use std::path::Path;
use std::time::Duration;

use p256::ecdsa::SigningKey;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::Value;

use super::cosign::{self, Invalid, SignatureImage};
use super::keys::{self, PublicKey};
use super::*;
use crate::catalog::{Catalog, CatalogOptions, LayerSource};
use crate::testsupport::*;

/// A fixed key (tests need no randomness): scalar `n` repeated.
fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32].into()).unwrap()
}

fn public(n: u8) -> PublicKey {
    let k = *key(n).verifying_key();
    PublicKey {
        path: format!("/etc/keys/{n}.pub").into(),
        id: keys::key_id(&k),
        key: k,
    }
}

fn sign(n: u8, name: &str, digest: &Digest) -> SignatureImage {
    let k = key(n);
    cosign::sign(&k, &keys::key_id(k.verifying_key()), name, digest)
}

/// The payload and signature of a signature image.
fn parts(sig: &SignatureImage) -> (Vec<u8>, cosign::SignatureLayer) {
    let layer = cosign::signature_layers(&sig.manifest).unwrap().remove(0);
    (sig.blobs[0].1.clone(), layer)
}

fn image_digest() -> Digest {
    Digest::of(b"an image manifest")
}

#[test]
fn a_good_signature_verifies_with_its_key_only() {
    let d = image_digest();
    let sig = sign(1, "docker.io/library/busybox:1.36", &d);
    assert_eq!(
        sig.name,
        format!("docker.io/library/busybox:sha256-{}.sig", d.hex())
    );
    assert!(cosign::is_signature_name(&sig.name));
    assert!(!cosign::is_signature_name("docker.io/library/busybox:1.36"));
    let (payload, layer) = parts(&sig);
    let keys = [public(2), public(1)];
    assert_eq!(
        cosign::verify(
            &keys,
            &d,
            &payload,
            &layer.signature,
            layer.key_id.as_deref()
        ),
        Ok(1)
    );
    // The payload names the digest the way cosign does.
    let doc: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        doc["critical"]["image"]["docker-manifest-digest"],
        d.to_string()
    );
    assert_eq!(
        doc["critical"]["identity"]["docker-reference"],
        "docker.io/library/busybox"
    );
}

#[test]
fn a_tampered_payload_is_a_bad_signature_naming_the_key() {
    let d = image_digest();
    let (payload, layer) = parts(&sign(1, "example.com/app:1", &d));
    let other = Digest::of(b"another image");
    let tampered = String::from_utf8(payload)
        .unwrap()
        .replace(&d.to_string(), &other.to_string());
    let keys = [public(1)];
    let err = cosign::verify(
        &keys,
        &other,
        tampered.as_bytes(),
        &layer.signature,
        layer.key_id.as_deref(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        Invalid::Altered {
            key: "/etc/keys/1.pub".into()
        }
    );
    // Without the key annotation (a signature made by cosign itself).
    let err =
        cosign::verify(&keys, &other, tampered.as_bytes(), &layer.signature, None).unwrap_err();
    assert_eq!(err, Invalid::NoKey);
    // A signature that is no signature.
    let err = cosign::verify(&keys, &d, b"{}", "bm90IGEgc2lnbmF0dXJl", None).unwrap_err();
    assert!(matches!(err, Invalid::Encoding(_)), "{err:?}");
}

#[test]
fn a_signature_by_another_key_is_an_unknown_key() {
    let d = image_digest();
    let (payload, layer) = parts(&sign(3, "example.com/app:1", &d));
    let err = cosign::verify(
        &[public(1), public(2)],
        &d,
        &payload,
        &layer.signature,
        layer.key_id.as_deref(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        Invalid::UnknownKey {
            key_id: public(3).id
        }
    );
    assert!(err.to_string().starts_with("unknown key"), "{err}");
}

#[test]
fn a_signature_of_another_digest_is_refused() {
    let d = image_digest();
    let other = Digest::of(b"another image");
    // A valid signature, copied from another image.
    let (payload, layer) = parts(&sign(1, "example.com/app:1", &other));
    let err = cosign::verify(&[public(1)], &d, &payload, &layer.signature, None).unwrap_err();
    assert_eq!(
        err,
        Invalid::WrongDigest {
            signed: other.to_string(),
            image: d
        }
    );
}

#[test]
fn keys_are_read_from_pem_files_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(5);
    let private = dir.path().join("cosign.key");
    std::fs::write(&private, k.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
    let public_file = dir.path().join("cosign.pub");
    std::fs::write(
        &public_file,
        k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
    )
    .unwrap();
    let signer = Signer::from_file(&private).unwrap();
    let pk = keys::read_public_key(&public_file).unwrap();
    assert_eq!(signer.key_id(), pk.id);
    // The halves mixed up, and cosign's encrypted form, are named.
    let err = keys::read_public_key(&private).unwrap_err().to_string();
    assert!(
        err.contains("cosign.key") && err.contains("PUBLIC KEY"),
        "{err}"
    );
    let err = keys::read_private_key(&public_file)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cosign.pub"), "{err}");
    let encrypted = dir.path().join("enc.key");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\neyJr\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = keys::read_private_key(&encrypted).unwrap_err().to_string();
    assert!(err.contains("enc.key") && err.contains("cosign"), "{err}");
}

/// Adds `sig` (a signature image) to `layout`.
fn add_signature(layout: &mut OciLayout, sig: &SignatureImage) {
    for (_, bytes) in &sig.blobs {
        layout.add_blob(bytes.clone());
    }
    layout.tag(
        &sig.name,
        sig.manifest_digest(),
        sig.manifest.len() as u64,
        false,
    );
}

/// `sig` with its payload rewritten by `edit` and its manifest redone to
/// match (what someone swapping the media could do without the key).
fn tampered(sig: &SignatureImage, edit: impl Fn(&str) -> String) -> SignatureImage {
    let payload = edit(std::str::from_utf8(&sig.blobs[0].1).unwrap()).into_bytes();
    let mut manifest: Value = serde_json::from_slice(&sig.manifest).unwrap();
    manifest["layers"][0]["digest"] = Digest::of(&payload).to_string().into();
    manifest["layers"][0]["size"] = payload.len().into();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    SignatureImage {
        name: sig.name.clone(),
        blobs: vec![
            (Digest::of(&payload), payload),
            sig.blobs[1].clone(),
            (Digest::of(&manifest), manifest.clone()),
        ],
        manifest,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    catalog: Arc<Catalog>,
    signed: ImageSpec,
    unsigned: ImageSpec,
    tampered: ImageSpec,
}

/// One archive: `signed:1` signed with key 1, `plain:1` unsigned,
/// `forged:1` with a tampered signature; a second archive `extra.tar`
/// reuses the signed image's top layer in an unsigned image.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let signed = ImageSpec::new(vec![
        layer_tar(&[("etc/signed", b"s")]),
        layer_tar(&[("etc/top", b"t")]),
    ]);
    let unsigned = ImageSpec::new(vec![layer_tar(&[("etc/plain", b"p")])]);
    let forged = ImageSpec::new(vec![layer_tar(&[("etc/forged", b"f")])]);
    let mut l = OciLayout::default();
    let s = l.add_image(&signed);
    l.tag("example.com/signed:1", s.manifest, s.manifest_size, false);
    let u = l.add_image(&unsigned);
    l.tag("example.com/plain:1", u.manifest, u.manifest_size, false);
    let f = l.add_image(&forged);
    l.tag("example.com/forged:1", f.manifest, f.manifest_size, false);
    add_signature(&mut l, &sign(1, "example.com/signed:1", &s.manifest));
    let good = sign(1, "example.com/forged:1", &f.manifest);
    add_signature(
        &mut l,
        &tampered(&good, |p| {
            p.replace("example.com/forged", "example.com/evil")
        }),
    );
    write(dir.path(), "bundle.tar", &l.to_tar());
    // Unsigned, claiming the signed image's layers (its config's diff_ids)
    // with other bytes.
    let mut x = OciLayout::default();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": signed.diff_ids().iter().map(|d| d.to_string()).collect::<Vec<_>>()},
    }))
    .unwrap();
    let (cd, cn) = x.add_blob(config);
    let descs: Vec<Value> = [b"evil-0".as_slice(), b"evil-1"]
        .iter()
        .map(|b| {
            let (d, n) = x.add_blob(layer_tar(&[("etc/evil", b)]));
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": n})
        })
        .collect();
    let (md, mn) = x.add_blob(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cn},
            "layers": descs,
        }))
        .unwrap(),
    );
    x.tag("example.com/lookalike:1", md, mn, false);
    let extra = write(dir.path(), "extra.tar", &x.to_tar());
    // The newer archive: its layer entries win.
    std::fs::File::options()
        .write(true)
        .open(&extra)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let catalog = Catalog::open(CatalogOptions {
        dirs: vec![dir.path().into()],
        settle: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    Fixture {
        _dir: dir,
        catalog,
        signed,
        unsigned,
        tampered: forged,
    }
}

fn info(c: &Catalog, name: &str) -> ImageInfo {
    c.resolve(name)
        .unwrap_or_else(|| panic!("{name} not archived"))
}

#[test]
fn verdicts_of_signed_unsigned_and_tampered_images() {
    let fx = fixture();
    let c = &fx.catalog;
    let names: Vec<String> = c.images().into_iter().map(|i| i.entry.name).collect();
    assert_eq!(
        names,
        [
            "example.com/forged:1",
            "example.com/lookalike:1",
            "example.com/plain:1",
            "example.com/signed:1"
        ],
        "signature images are no images"
    );
    let trust = Trust::new(Require::Enforce, vec![public(1)]);
    let v = |name: &str| trust.verdict(c, &info(c, name).entry.digest);
    assert_eq!(
        v("example.com/signed:1"),
        Verdict::Valid {
            key: "/etc/keys/1.pub".into()
        }
    );
    assert_eq!(v("example.com/plain:1"), Verdict::Unsigned);
    assert!(
        matches!(
            v("example.com/forged:1"),
            Verdict::Invalid(Invalid::Altered { .. })
        ),
        "{:?}",
        v("example.com/forged:1")
    );
    // The same archive against another key: unknown key.
    let other = Trust::new(Require::Enforce, vec![public(2)]);
    assert!(matches!(
        other.verdict(c, &info(c, "example.com/signed:1").entry.digest),
        Verdict::Invalid(Invalid::UnknownKey { .. })
    ));
    let survey = trust.survey(c);
    let states: Vec<&str> = survey.iter().map(|(_, v)| v.state()).collect();
    assert_eq!(states, ["invalid", "unsigned", "unsigned", "valid"]);
}

#[test]
fn enforce_refuses_by_image_archive_and_reason_warn_admits() {
    let fx = fixture();
    let c = &fx.catalog;
    let enforce = Trust::new(Require::Enforce, vec![public(1)]);
    assert_eq!(
        enforce.admit(c, &info(c, "example.com/signed:1"), Use::Register),
        Ok(())
    );
    let refusal = enforce
        .admit(c, &info(c, "example.com/plain:1"), Use::Register)
        .unwrap_err();
    let msg = refusal.to_string();
    assert!(
        msg.contains("example.com/plain:1")
            && msg.contains("bundle.tar")
            && msg.contains("unsigned"),
        "{msg}"
    );
    let msg = enforce
        .admit(c, &info(c, "example.com/forged:1"), Use::Serve)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("bad signature"), "{msg}");
    // The mirror: by tag and by digest; signatures themselves are served.
    let signed = info(c, "example.com/signed:1").entry.digest;
    let plain = info(c, "example.com/plain:1").entry.digest;
    assert!(enforce.admit_manifest(c, &signed, None).is_ok());
    assert!(enforce
        .admit_manifest(c, &plain, Some("example.com/plain:1"))
        .is_err());
    assert!(enforce.admit_manifest(c, &plain, None).is_err());
    let sig_name = format!("example.com/signed:{}", cosign::signature_tag(&signed));
    let sig = info(c, &sig_name).entry.digest;
    assert!(enforce.admit_manifest(c, &sig, Some(&sig_name)).is_ok());
    assert!(enforce.admit_manifest(c, &sig, None).is_ok());
    // Warn and off admit everything.
    for require in [Require::Warn, Require::Off] {
        let t = Trust::new(require, vec![public(1)]);
        assert!(t
            .admit(c, &info(c, "example.com/plain:1"), Use::Mount)
            .is_ok());
        assert!(t.admit_manifest(c, &plain, None).is_ok());
    }
}

#[test]
fn layers_are_admitted_only_under_a_signed_manifest() {
    let fx = fixture();
    let c = &fx.catalog;
    let trust = Trust::new(Require::Enforce, vec![public(1)]);
    let layers = TrustedLayers::new(c.clone(), trust);
    // Whichever archive's entry the catalog holds for the signed chain
    // IDs, only the signed manifest's blobs come out.
    let signed_blobs: Vec<Digest> = fx
        .signed
        .layers
        .iter()
        .map(|l| Digest::of(&compress_layer(l, fx.signed.compression)))
        .collect();
    for (i, chain) in fx.signed.chain_ids().iter().enumerate() {
        let raw = c.layer(chain).unwrap();
        match layers.layer(chain) {
            Some(l) => assert_eq!(l.digest, signed_blobs[i]),
            None => assert_ne!(raw.digest, signed_blobs[i], "signed layer {chain} refused"),
        }
    }
    assert!(layers.layer(&fx.unsigned.chain_ids()[0]).is_none());
    assert!(layers.layer(&fx.tampered.chain_ids()[0]).is_none());
    assert!(layers
        .layer_with_diff_id(&fx.unsigned.diff_ids()[0])
        .is_none());
    if let Some(l) = layers.layer_with_diff_id(&fx.signed.diff_ids()[0]) {
        assert_eq!(l.digest, signed_blobs[0]);
    }
    // Off: the catalog as it is.
    let open = TrustedLayers::new(c.clone(), Trust::off());
    assert!(open.layer(&fx.unsigned.chain_ids()[0]).is_some());
}

/// The layer index follows the catalog: a layer of an unsigned image is
/// refused, admitted once an archive with the image's signature arrives,
/// refused again when that archive gives way to one with a tampered
/// signature, and when that one goes too.
#[test]
fn admitted_layers_follow_the_signatures_as_archives_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ImageSpec::new(vec![layer_tar(&[("etc/app", b"a")])]);
    let (l, built) = OciLayout::single("example.com/app:1", &spec);
    write(dir.path(), "app.tar", &l.to_tar());
    let c = Catalog::open(CatalogOptions {
        dirs: vec![dir.path().into()],
        settle: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    let trust = Trust::new(Require::Enforce, vec![public(1)]);
    let layer = c.layer(&spec.chain_ids()[0]).unwrap();
    let refused = |trust: &Trust| {
        trust
            .admit_layer(&c, &layer, Use::Mount)
            .map_err(|r| r.reason)
    };
    let states = |trust: &Trust| -> Vec<&'static str> {
        trust.survey(&c).iter().map(|(_, v)| v.state()).collect()
    };
    assert!(refused(&trust).unwrap_err().contains("unsigned"));
    assert_eq!(states(&trust), ["unsigned"]);

    let good = sign(1, "example.com/app:1", &built.manifest);
    let mut s = OciLayout::default();
    add_signature(&mut s, &good);
    write(dir.path(), "sig.tar", &s.to_tar());
    c.rescan();
    assert_eq!(refused(&trust), Ok(()));
    assert_eq!(states(&trust), ["valid"]);

    let mut s = OciLayout::default();
    add_signature(
        &mut s,
        &tampered(&good, |p| p.replace("example.com/app", "example.com/evil")),
    );
    write(dir.path(), "sig2.tar", &s.to_tar());
    std::fs::remove_file(dir.path().join("sig.tar")).unwrap();
    c.rescan();
    assert!(refused(&trust).unwrap_err().contains("bad signature"));
    assert_eq!(states(&trust), ["invalid"]);

    std::fs::remove_file(dir.path().join("sig2.tar")).unwrap();
    c.rescan();
    assert!(refused(&trust).unwrap_err().contains("unsigned"));
    // Nothing changed: the same index answers.
    assert!(refused(&trust).unwrap_err().contains("unsigned"));
    assert_eq!(states(&trust), ["unsigned"]);
}

#[test]
fn pack_sign_writes_signatures_the_node_verifies() {
    let src = tempfile::tempdir().unwrap();
    let spec = ImageSpec::new(vec![layer_tar(&[("etc/app", b"a")])]);
    let (l, built) = OciLayout::single("example.com/app:1", &spec);
    write(src.path(), "src.tar", &l.to_tar());
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("k.pem");
    std::fs::write(
        &key_file,
        key(7).to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("signed.tar.zst");
    let summary = crate::pack::pack(
        &crate::pack::PackOptions {
            output: out.clone(),
            refs: vec!["example.com/app:1".into()],
            sources: vec![src.path().into()],
            level: 3,
            frame_size: 1 << 20,
            threads: 1,
            sign: Some(Signer::from_file(&key_file).unwrap()),
            ..Default::default()
        },
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(summary.signatures, 1);
    let c = Catalog::open(CatalogOptions {
        dirs: vec![out_dir.path().into()],
        settle: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    assert!(c.broken().is_empty(), "{:?}", c.broken());
    assert_eq!(c.images().len(), 1);
    let sig_name = format!("example.com/app:sha256-{}.sig", built.manifest.hex());
    assert!(
        c.resolve(&sig_name).is_some(),
        "{sig_name} listed in index.json"
    );
    let trust = Trust::new(Require::Enforce, vec![public(7)]);
    assert!(matches!(
        trust.verdict(&c, &built.manifest),
        Verdict::Valid { .. }
    ));
    let layers = TrustedLayers::new(c.clone(), trust);
    assert!(layers.layer(&spec.chain_ids()[0]).is_some());
    let archive: &Path = &c.archives()[0].index.path;
    assert_eq!(archive, out.as_path());
}

#[test]
fn cosign_encrypted_keys_decrypt_with_their_password_only() {
    use base64::Engine;
    use crypto_secretbox::aead::{Aead, KeyInit};
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let der = key(9).to_pkcs8_der().unwrap().as_bytes().to_vec();
    let (salt, nonce) = ([7u8; 32], [3u8; 24]);
    // Small scrypt parameters: the format, not the cost, is under test.
    let params = scrypt::Params::new(4, 8, 1, 32).unwrap();
    let mut k = [0u8; 32];
    scrypt::scrypt(b"pw", &salt, &params, &mut k).unwrap();
    let sealed = crypto_secretbox::XSalsa20Poly1305::new(&k.into())
        .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), der.as_slice())
        .unwrap();
    let json = serde_json::to_vec(&serde_json::json!({
        "kdf": {"name": "scrypt", "params": {"N": 16, "r": 8, "p": 1}, "salt": b64(&salt)},
        "cipher": {"name": "nacl/secretbox", "nonce": b64(&nonce)},
        "ciphertext": b64(&sealed),
    }))
    .unwrap();
    assert_eq!(keys::decrypt_cosign(&json, b"pw").unwrap(), der);
    let err = keys::decrypt_cosign(&json, b"nope")
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong password"), "{err}");
}
