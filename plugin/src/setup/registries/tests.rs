use super::*;

const MIRROR: &str = "http://127.0.0.1:5050";

fn want(upstream: Option<&str>, extra: &[&str]) -> RegistriesWant {
    let mut registries = vec![WILDCARD.to_string()];
    registries.extend(extra.iter().map(|s| s.to_string()));
    RegistriesWant {
        mirror: MIRROR.into(),
        upstream: upstream.map(str::to_string),
        registries,
    }
}

fn endpoints(text: &str, registry: &str) -> Vec<String> {
    let doc = YamlLoader::load_from_str(text).unwrap().remove(0);
    doc["mirrors"][registry]["endpoint"]
        .as_vec()
        .unwrap_or_else(|| panic!("no mirrors.{registry}.endpoint in\n{text}"))
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

fn run(text: &str, w: &RegistriesWant) -> EditedRegistries {
    let path = Path::new("/etc/rancher/k3s/registries.yaml");
    let out = edit(path, text, w).unwrap();
    // Idempotent: a second edit changes nothing.
    let again = edit(path, &out.text, w).unwrap();
    assert!(
        !again.changed && again.edits.is_empty(),
        "second edit changed {:?}:\n{}",
        again.edits,
        out.text
    );
    out
}

#[test]
fn new_file() {
    let out = run("", &want(Some("https://harbor.example.internal"), &[]));
    assert!(out.changed && out.comments_kept);
    assert_eq!(
            out.text,
            "mirrors:\n  \"*\":\n    endpoint:\n      - \"http://127.0.0.1:5050\"\n      - \"https://harbor.example.internal\"\n"
        );
}

/// The documented k3s example, with comments, a rewrite, configs and a
/// block list that already names the private registry.
#[test]
fn k3s_example_keeps_comments_and_order() {
    let text = "\
# site registries, kept by hand
mirrors:
  docker.io:   # Docker Hub through Harbor
    endpoint:
      - \"https://harbor.example.internal\"
    rewrite:
      \"^rancher/(.*)\": \"mirrored/rancher/$1\"
  registry.example.com:5000:
    endpoint: [\"https://registry.example.com:5000\"] # flow list
configs:
  \"harbor.example.internal\":
    auth:
      username: robot # the robot account
      password: \"s3cret\"
    tls:
      ca_file: /etc/ssl/harbor.pem
";
    let out = run(text, &want(Some("https://harbor.example.internal"), &[]));
    assert!(out.comments_kept, "{}", out.text);
    for comment in [
        "# site registries, kept by hand",
        "# Docker Hub through Harbor",
        "# flow list",
        "# the robot account",
    ] {
        assert!(out.text.contains(comment), "{comment} lost:\n{}", out.text);
    }
    assert_eq!(
        endpoints(&out.text, "docker.io"),
        [MIRROR, "https://harbor.example.internal"]
    );
    assert_eq!(
        endpoints(&out.text, "registry.example.com:5000"),
        [MIRROR, "https://registry.example.com:5000"]
    );
    assert_eq!(
        endpoints(&out.text, "*"),
        [MIRROR, "https://harbor.example.internal"]
    );
    let doc = YamlLoader::load_from_str(&out.text).unwrap().remove(0);
    assert_eq!(
        doc["mirrors"]["docker.io"]["rewrite"]["^rancher/(.*)"].as_str(),
        Some("mirrored/rancher/$1")
    );
    assert_eq!(
        doc["configs"]["harbor.example.internal"]["auth"]["password"].as_str(),
        Some("s3cret")
    );
    // Only lines were added: every original line is still there, in order.
    let mut rest = out.text.lines();
    for line in text.lines().filter(|l| !l.contains("flow list")) {
        assert!(rest.any(|l| l == line), "{line:?} moved or changed");
    }
    assert_eq!(out.edits.len(), 3, "{:?}", out.edits);
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(out.warnings[0].starts_with("mirrors.docker.io has a `rewrite`"));
}

#[test]
fn mirror_moves_first_and_is_not_doubled() {
    let text = "mirrors:\n  \"*\":\n    endpoint:\n    - https://harbor.example.internal\n    - 127.0.0.1:5050/v2   # ours, last\n";
    let out = run(text, &want(None, &[]));
    assert_eq!(
        endpoints(&out.text, "*"),
        [MIRROR, "https://harbor.example.internal"]
    );
    assert!(out.comments_kept);
    assert!(
        out.text
            .contains("    - \"http://127.0.0.1:5050\"\n    - https://"),
        "same dash indentation as the list's:\n{}",
        out.text
    );
}

#[test]
fn already_right_is_unchanged() {
    let text = "mirrors:\n  '*':\n    endpoint: ['http://127.0.0.1:5050/', 'https://r.example']\n";
    let out = edit(Path::new("r.yaml"), text, &want(None, &[])).unwrap();
    assert!(!out.changed && out.edits.is_empty());
    assert_eq!(out.text, text);
}

#[test]
fn registries_and_empty_entries() {
    // An entry with no endpoint (k3s then uses only the default
    // endpoint) gets the mirror; `--registry quay.io` adds one.
    let text = "mirrors:\n  \"*\":\n  docker.io:\n    rewrite:\n      \"^(.*)\": \"hub/$1\"\nconfigs: {}\n";
    let out = run(text, &want(Some("https://harbor"), &["quay.io"]));
    assert!(out.comments_kept, "{}", out.text);
    assert_eq!(endpoints(&out.text, "*"), [MIRROR]);
    assert_eq!(endpoints(&out.text, "docker.io"), [MIRROR]);
    assert_eq!(endpoints(&out.text, "quay.io"), [MIRROR, "https://harbor"]);
}

#[test]
fn no_mirrors_key_appends_a_block() {
    let text = "# only auth so far\nconfigs:\n  harbor:\n    auth: {username: u, password: p}";
    let out = run(text, &want(None, &[]));
    assert!(out.text.starts_with("# only auth so far\nconfigs:"));
    assert!(out
        .text
        .ends_with("mirrors:\n  \"*\":\n    endpoint:\n      - \"http://127.0.0.1:5050\"\n"));
}

#[test]
fn flow_mapping_is_rewritten_without_comments() {
    let text = "# gone after the rewrite\nmirrors: {docker.io: {endpoint: [\"https://h\"]}}\n";
    let out = run(text, &want(None, &[]));
    assert!(!out.comments_kept);
    assert_eq!(endpoints(&out.text, "docker.io"), [MIRROR, "https://h"]);
    assert_eq!(endpoints(&out.text, "*"), [MIRROR]);
}

#[test]
fn errors_name_the_field() {
    let p = Path::new("/etc/rancher/rke2/registries.yaml");
    let e = edit(p, "mirrors: [a, b]\n", &want(None, &[])).unwrap_err();
    assert!(e.to_string().contains("`mirrors` is a list"), "{e}");
    assert!(e
        .to_string()
        .starts_with("/etc/rancher/rke2/registries.yaml"));
    let e = edit(
        p,
        "mirrors:\n  docker.io:\n    endpoint: https://x\n",
        &want(None, &[]),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("`mirrors.docker.io.endpoint` is a string"),
        "{e}"
    );
    let e = edit(p, "mirrors:\n  a: [\n", &want(None, &[])).unwrap_err();
    assert!(e.to_string().contains("not valid YAML"), "{e}");
    let e = edit(p, "a: 1\n---\nb: 2\n", &want(None, &[])).unwrap_err();
    assert!(e.to_string().contains("2 YAML documents"), "{e}");
}

#[test]
fn endpoints_compare_as_k3s_reads_them() {
    assert!(same_endpoint("127.0.0.1:5050", "http://127.0.0.1:5050/v2"));
    assert!(same_endpoint("localhost:5050/", "HTTP://localhost:5050"));
    assert!(!same_endpoint("127.0.0.1:443", "http://127.0.0.1:443"));
    assert!(same_endpoint("harbor.example", "https://harbor.example/"));
    assert!(!same_endpoint(
        "http://harbor.example",
        "https://harbor.example"
    ));
}

/// The fixtures in `testdata/`: a k3s and an rke2 registries.yaml as sites
/// write them, edited, compared with the `.expected` files.
mod fixtures {
    use super::*;

    fn check(name: &str, upstream: Option<&str>, extra: &[&str]) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/setup/testdata");
        let input = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap();
        let expected = std::fs::read_to_string(dir.join(format!("{name}.expected.yaml"))).unwrap();
        let mut registries = vec![WILDCARD.to_string()];
        registries.extend(extra.iter().map(|s| s.to_string()));
        let want = RegistriesWant {
            mirror: "http://127.0.0.1:5050".into(),
            upstream: upstream.map(str::to_string),
            registries,
        };
        let out = edit(Path::new(name), &input, &want).unwrap();
        assert!(out.comments_kept, "{name}: comments lost");
        assert_eq!(out.text, expected, "{name}: got\n{}", out.text);
        let again = edit(Path::new(name), &out.text, &want).unwrap();
        assert!(
            !again.changed,
            "{name}: a second edit changed {:?}",
            again.edits
        );
    }

    #[test]
    fn k3s_site_file() {
        check(
            "registries-k3s",
            Some("https://harbor.example.internal"),
            &["quay.io"],
        );
    }

    #[test]
    fn rke2_wildcard_file() {
        check("registries-rke2", None, &[]);
    }
}
