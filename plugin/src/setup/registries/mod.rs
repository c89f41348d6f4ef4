//! `config --registries-yaml FILE`: the mirror first in a k3s / rke2
//! `registries.yaml` (`/etc/rancher/k3s/registries.yaml`,
//! `/etc/rancher/rke2/registries.yaml`).
//!
//! The format (rancher/wharfie's `registries.Registry`, read by k3s and rke2):
//!
//! ```yaml
//! mirrors:
//!   "*":                      # every registry without an entry of its own
//!     endpoint:
//!       - "http://127.0.0.1:5050"
//!       - "https://harbor.example.internal"
//!   docker.io:
//!     endpoint: ["https://harbor.example.internal"]
//!     rewrite: {"^rancher/(.*)": "mirrored/rancher/$1"}
//! configs:
//!   "harbor.example.internal":
//!     auth: {username: robot, password: "..."}
//!     tls: {ca_file: /etc/ssl/harbor.pem}
//! ```
//!
//! k3s writes one `certs.d/<registry>/hosts.toml` per `mirrors` entry (the
//! `"*"` entry becomes `_default`), each endpoint a `[host."<url>/v2"]` in
//! list order, then the registry's default endpoint as `server` (always
//! tried last unless `disable-default-registry-endpoint`). A registry with an
//! entry of its own never reads `_default`: so the mirror goes first in
//! *every* entry, and a `"*"` entry (and one per `--registry`) is added when
//! missing.
//!
//! Comments: the file is parsed with `yaml-rust2` (maintained, pure Rust,
//! YAML 1.2) to know what it means, and the edit is then made line by line
//! in the original text, so comments, quoting and order stay as they were.
//! No maintained Rust YAML crate round-trips comments (`serde_yaml` is
//! archived and drops them, `yaml-rust2`'s emitter too), so the line edit is
//! checked by parsing its result and comparing it with the intended
//! document; a layout the line edit does not handle (flow mappings, a
//! multi-line flow list, anchors) is written out from the parsed document
//! instead, and the caller is told that comments were lost.

mod lines;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

use lines::{edit_lines, key_text};

/// The `mirrors` key that stands for every registry without its own entry.
pub const WILDCARD: &str = "*";

#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    #[error("{}: not valid YAML: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: holds {count} YAML documents; registries.yaml is one", path.display())]
    Documents { path: PathBuf, count: usize },
    #[error("{}: `{key}` is {found}, expected a mapping", path.display())]
    NotAMapping {
        path: PathBuf,
        key: String,
        found: &'static str,
    },
    #[error(
        "{}: `mirrors.{registry}.endpoint` is {found}, expected a list of URLs",
        path.display()
    )]
    EndpointNotAList {
        path: PathBuf,
        registry: String,
        found: &'static str,
    },
}

/// What the file must say.
#[derive(Clone, Debug)]
pub struct RegistriesWant {
    /// The mirror's URL (`http://127.0.0.1:5050`): first in every entry.
    pub mirror: String,
    /// The private registry, after the mirror in the entries added here.
    pub upstream: Option<String>,
    /// The entries that must exist (`"*"` and each `--registry`).
    pub registries: Vec<String>,
}

/// The edit's result.
#[derive(Debug)]
pub struct EditedRegistries {
    pub text: String,
    pub changed: bool,
    /// One line per change (`mirrors."*" added`, ...).
    pub edits: Vec<String>,
    /// False when the file had to be written out from the parsed document
    /// (its comments are then gone).
    pub comments_kept: bool,
    /// What the edit cannot fix, one line each: entries with a `rewrite`
    /// (k3s applies it to every endpoint, the mirror included).
    pub warnings: Vec<String>,
}

fn kind(y: &Yaml) -> &'static str {
    match y {
        Yaml::Real(_) => "a number",
        Yaml::Integer(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Boolean(_) => "a boolean",
        Yaml::Array(_) => "a list",
        Yaml::Hash(_) => "a mapping",
        Yaml::Alias(_) => "an alias",
        Yaml::Null => "empty",
        Yaml::BadValue => "invalid",
    }
}

/// An endpoint as k3s reads it: no scheme means https, except localhost on
/// a port other than 443 (http); a trailing `/` or `/v2` changes nothing.
fn normalize_endpoint(e: &str) -> String {
    let e = e.trim();
    let mut url = if e.contains("://") {
        e.to_ascii_lowercase()
    } else {
        let host = e.split('/').next().unwrap_or("");
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) if !n.ends_with(']') || host.starts_with('[') => (n, Some(p)),
            _ => (host, None),
        };
        let local = matches!(name, "localhost" | "[::1]") || name.starts_with("127.");
        let scheme = if local && port.is_some_and(|p| p != "443") {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", e.to_ascii_lowercase())
    };
    while url.ends_with('/') {
        url.pop();
    }
    if let Some(stripped) = url.strip_suffix("/v2") {
        url = stripped.to_string();
    }
    url
}

/// Whether two endpoints name the same URL for k3s.
pub fn same_endpoint(a: &str, b: &str) -> bool {
    normalize_endpoint(a) == normalize_endpoint(b)
}

fn key_str(k: &Yaml) -> String {
    match k {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        _ => "~".into(),
    }
}

/// The endpoints an entry should have, and what changed.
fn want_endpoints(existing: &[String], want: &RegistriesWant) -> Vec<String> {
    // The mirror already first (however it is spelled) stays as written.
    let first = match existing.first() {
        Some(e) if same_endpoint(e, &want.mirror) => e.clone(),
        _ => want.mirror.clone(),
    };
    let mut out = vec![first];
    out.extend(
        existing
            .iter()
            .filter(|e| !same_endpoint(e, &want.mirror))
            .cloned(),
    );
    out
}

/// The parsed document's mirrors: (registry, endpoints, present in file).
struct Plan {
    /// Entries to add, in order.
    added: Vec<(String, Vec<String>)>,
    /// Existing entries whose endpoint list changes: (registry, new list).
    changed: Vec<(String, Vec<String>)>,
    /// Existing entries with a `rewrite`.
    rewrites: Vec<String>,
    /// The whole intended document.
    expected: Yaml,
}

fn plan(path: &Path, doc: &Yaml, want: &RegistriesWant) -> Result<Plan, RegistriesError> {
    let not_a_mapping = |key: &str, y: &Yaml| RegistriesError::NotAMapping {
        path: path.to_path_buf(),
        key: key.to_string(),
        found: kind(y),
    };
    let root = match doc {
        Yaml::Hash(h) => h.clone(),
        Yaml::Null => Hash::new(),
        other => return Err(not_a_mapping("(the document)", other)),
    };
    let mirrors_key = Yaml::String("mirrors".into());
    let mirrors = match root.get(&mirrors_key) {
        None | Some(Yaml::Null) => Hash::new(),
        Some(Yaml::Hash(h)) => h.clone(),
        Some(other) => return Err(not_a_mapping("mirrors", other)),
    };
    let mut added = Vec::new();
    let mut new_mirrors = Hash::new();
    for r in &want.registries {
        if !mirrors.contains_key(&Yaml::String(r.clone())) && !added.iter().any(|(a, _)| a == r) {
            let mut list = vec![want.mirror.clone()];
            if let Some(u) = &want.upstream {
                if !same_endpoint(u, &want.mirror) {
                    list.push(u.clone());
                }
            }
            let mut entry = Hash::new();
            entry.insert(
                Yaml::String("endpoint".into()),
                Yaml::Array(list.iter().cloned().map(Yaml::String).collect()),
            );
            new_mirrors.insert(Yaml::String(r.clone()), Yaml::Hash(entry));
            added.push((r.clone(), list));
        }
    }
    let mut changed = Vec::new();
    let mut rewrites = Vec::new();
    for (k, v) in mirrors.iter() {
        let name = key_str(k);
        let mut entry = match v {
            Yaml::Null => Hash::new(),
            Yaml::Hash(h) => h.clone(),
            other => return Err(not_a_mapping(&format!("mirrors.{name}"), other)),
        };
        if entry
            .get(&Yaml::String("rewrite".into()))
            .and_then(Yaml::as_hash)
            .is_some_and(|h| !h.is_empty())
        {
            rewrites.push(name.clone());
        }
        let endpoint_key = Yaml::String("endpoint".into());
        let existing: Vec<String> = match entry.get(&endpoint_key) {
            None | Some(Yaml::Null) => Vec::new(),
            Some(Yaml::Array(a)) => a
                .iter()
                .map(|e| match e {
                    Yaml::String(s) => Ok(s.clone()),
                    other => Err(RegistriesError::EndpointNotAList {
                        path: path.to_path_buf(),
                        registry: name.clone(),
                        found: kind(other),
                    }),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(RegistriesError::EndpointNotAList {
                    path: path.to_path_buf(),
                    registry: name.clone(),
                    found: kind(other),
                })
            }
        };
        let list = want_endpoints(&existing, want);
        if list != existing {
            changed.push((name.clone(), list.clone()));
        }
        entry.insert(
            endpoint_key,
            Yaml::Array(list.into_iter().map(Yaml::String).collect()),
        );
        new_mirrors.insert(k.clone(), Yaml::Hash(entry));
    }
    let mut expected = root;
    expected.insert(mirrors_key, Yaml::Hash(new_mirrors));
    Ok(Plan {
        added,
        changed,
        rewrites,
        expected: Yaml::Hash(expected),
    })
}

/// Two documents mean the same (mappings compared without their order).
fn same_meaning(a: &Yaml, b: &Yaml) -> bool {
    match (a, b) {
        (Yaml::Hash(x), Yaml::Hash(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_meaning(v, w)))
        }
        (Yaml::Array(x), Yaml::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_meaning(v, w))
        }
        _ => a == b,
    }
}

fn load(path: &Path, text: &str) -> Result<Yaml, RegistriesError> {
    let mut docs = YamlLoader::load_from_str(text).map_err(|e| RegistriesError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    match docs.len() {
        0 => Ok(Yaml::Null),
        1 => Ok(docs.remove(0)),
        count => Err(RegistriesError::Documents {
            path: path.to_path_buf(),
            count,
        }),
    }
}

/// Puts the mirror first in `original` (the text of `path`, which only
/// names it in errors); an empty text is a file that does not exist yet.
pub fn edit(
    path: &Path,
    original: &str,
    want: &RegistriesWant,
) -> Result<EditedRegistries, RegistriesError> {
    let doc = load(path, original)?;
    let plan = plan(path, &doc, want)?;
    let mut edits: Vec<String> = plan
        .added
        .iter()
        .map(|(n, l)| format!("mirrors.{} added: endpoint {}", key_text(n), l.join(", ")))
        .collect();
    edits.extend(
        plan.changed
            .iter()
            .map(|(n, l)| format!("mirrors.{}.endpoint: {}", key_text(n), l.join(", "))),
    );
    // k3s copies an entry's rewrite onto each of its endpoints (wharfie's
    // format has no per-endpoint rewrite): the mirror would be asked for
    // the rewritten name, which no archive holds.
    let warnings: Vec<String> = plan
        .rewrites
        .iter()
        .map(|n| {
            format!(
                "mirrors.{0} has a `rewrite`: k3s / rke2 apply it to the mirror too, so images \
                 it renames are looked up in the archives under the new name and miss; move the \
                 prefix into the daemon's [[upstream]] (registry = \"{0}\", path_prefix = \"...\") \
                 and delete the rewrite",
                key_text(n).trim_matches('"')
            )
        })
        .collect();
    if edits.is_empty() {
        return Ok(EditedRegistries {
            text: original.to_string(),
            changed: false,
            edits,
            comments_kept: true,
            warnings,
        });
    }
    if let Some(text) = edit_lines(original, &plan, want) {
        if load(path, &text).is_ok_and(|d| same_meaning(&d, &plan.expected)) {
            return Ok(EditedRegistries {
                changed: text != original,
                text,
                edits,
                comments_kept: true,
                warnings,
            });
        }
    }
    let mut text = String::new();
    YamlEmitter::new(&mut text)
        .dump(&plan.expected)
        .expect("writing YAML into a String");
    let mut text = text
        .strip_prefix("---\n")
        .unwrap_or(&text)
        .trim_end()
        .to_string();
    text.push('\n');
    Ok(EditedRegistries {
        changed: text != original,
        text,
        edits,
        comments_kept: false,
        warnings,
    })
}
