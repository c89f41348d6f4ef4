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

use std::path::{Path, PathBuf};

use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

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

/// A YAML double-quoted scalar.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A mapping key as written for a new entry.
fn key_text(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !k.starts_with(['-', '.'])
    {
        k.to_string()
    } else {
        quoted(k)
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// `text` without a trailing ` # comment` (outside quotes), and the comment.
fn split_comment(text: &str) -> (&str, &str) {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev_space => return (text[..i].trim_end(), &text[i..]),
            None => {}
        }
        prev_space = c == ' ' || c == '\t';
    }
    (text.trim_end(), "")
}

fn unquote(s: &str) -> Option<String> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        if inner.contains('\\') || inner.contains('"') {
            return None;
        }
        return Some(inner.to_string());
    }
    if let Some(inner) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        if inner.contains('\'') {
            return None;
        }
        return Some(inner.to_string());
    }
    if s.starts_with(['"', '\'', '&', '*', '!', '{', '[', '|', '>']) {
        return None;
    }
    Some(s.to_string())
}

/// A `key: value` line: (key, value text, comment).
fn key_value(line: &str) -> Option<(String, &str, &str)> {
    let (code, comment) = split_comment(line.trim_start());
    // The key ends at the first `: ` (or a final `:`) outside quotes.
    let mut quote: Option<char> = None;
    for (i, c) in code.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == ':' && code[i + 1..].is_empty() => {
                return Some((unquote(&code[..i])?, "", comment));
            }
            None if c == ':' && code[i + 1..].starts_with(' ') => {
                return Some((unquote(&code[..i])?, code[i + 1..].trim(), comment));
            }
            None => {}
        }
    }
    None
}

/// The line edit: `None` when the layout is one it does not handle.
fn edit_lines(original: &str, plan: &Plan, want: &RegistriesWant) -> Option<String> {
    let lines: Vec<&str> = original.lines().collect();
    if lines
        .iter()
        .any(|l| l.starts_with("---") || l.starts_with("...") || l.contains('\t'))
    {
        return None;
    }
    // Per line: lines inserted before it, and its replacement (None: delete).
    let mut before: Vec<Vec<String>> = vec![Vec::new(); lines.len() + 1];
    let mut replace: Vec<Option<Option<String>>> = vec![None; lines.len()];
    let entry_block = |indent: usize, name: &str, list: &[String]| -> Vec<String> {
        let pad = " ".repeat(indent);
        let mut out = vec![
            format!("{pad}{}:", key_text(name)),
            format!("{pad}  endpoint:"),
        ];
        out.extend(list.iter().map(|e| format!("{pad}    - {}", quoted(e))));
        out
    };

    let mirrors_line = lines
        .iter()
        .position(|l| indent_of(l) == 0 && key_value(l).is_some_and(|(k, _, _)| k == "mirrors"));
    let Some(m) = mirrors_line else {
        // No `mirrors:` at all: a new block at the end.
        let mut text = original.to_string();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        if !text.trim().is_empty() {
            text.push('\n');
        }
        text.push_str("mirrors:\n");
        for (name, list) in &plan.added {
            for l in entry_block(2, name, list) {
                text.push_str(&l);
                text.push('\n');
            }
        }
        return Some(text);
    };
    let (_, value, _) = key_value(lines[m])?;
    if !value.is_empty() && value != "~" && value != "null" {
        return None; // `mirrors: {...}`: flow style
    }
    let end = (m + 1..lines.len())
        .find(|&i| is_content(lines[i]) && indent_of(lines[i]) == 0)
        .unwrap_or(lines.len());
    let child = (m + 1..end)
        .find(|&i| is_content(lines[i]))
        .map(|i| indent_of(lines[i]))
        .unwrap_or(2);
    if value == "~" || value == "null" {
        if (m + 1..end).any(|i| is_content(lines[i])) {
            return None;
        }
        replace[m] = Some(Some("mirrors:".into()));
    }
    for (name, list) in &plan.added {
        before[m + 1].extend(entry_block(child, name, list));
    }
    // The existing entries.
    let mut i = m + 1;
    while i < end {
        if !is_content(lines[i]) {
            i += 1;
            continue;
        }
        if indent_of(lines[i]) != child {
            return None;
        }
        let (name, value, _) = key_value(lines[i])?;
        if !value.is_empty() && value != "~" && value != "null" {
            return None;
        }
        let body_end = (i + 1..end)
            .find(|&j| is_content(lines[j]) && indent_of(lines[j]) <= child)
            .unwrap_or(end);
        let list = match plan.changed.iter().find(|(n, _)| *n == name) {
            Some((_, l)) => l,
            None => {
                i = body_end;
                continue;
            }
        };
        if value == "~" || value == "null" {
            let pad = " ".repeat(child);
            replace[i] = Some(Some(format!("{pad}{}:", key_text(&name))));
        }
        let grand = (i + 1..body_end)
            .find(|&j| is_content(lines[j]))
            .map(|j| indent_of(lines[j]))
            .unwrap_or(child + 2);
        let endpoint = (i + 1..body_end).find(|&j| {
            is_content(lines[j])
                && indent_of(lines[j]) == grand
                && key_value(lines[j]).is_some_and(|(k, _, _)| k == "endpoint")
        });
        match endpoint {
            None => {
                let pad = " ".repeat(grand);
                before[i + 1].push(format!("{pad}endpoint:"));
                before[i + 1].extend(list.iter().map(|e| format!("{pad}  - {}", quoted(e))));
            }
            Some(e) => {
                let (_, value, comment) = key_value(lines[e])?;
                let pad = " ".repeat(grand);
                if value.starts_with('[') {
                    if !value.ends_with(']') {
                        return None;
                    }
                    let items: Vec<String> = list.iter().map(|x| quoted(x)).collect();
                    let comment = if comment.is_empty() {
                        String::new()
                    } else {
                        format!(" {comment}")
                    };
                    replace[e] = Some(Some(format!(
                        "{pad}endpoint: [{}]{comment}",
                        items.join(", ")
                    )));
                } else if value.is_empty() || value == "~" || value == "null" {
                    if value == "~" || value == "null" {
                        replace[e] = Some(Some(format!("{pad}endpoint:")));
                    }
                    // The block list's items: `- x` lines at or under the key.
                    let mut items = Vec::new();
                    let mut j = e + 1;
                    while j < body_end {
                        if !is_content(lines[j]) {
                            j += 1;
                            continue;
                        }
                        let t = lines[j].trim_start();
                        if indent_of(lines[j]) >= grand && t.starts_with("- ") {
                            items.push(j);
                            j += 1;
                        } else if indent_of(lines[j]) > grand {
                            return None; // a multi-line item
                        } else {
                            break;
                        }
                    }
                    let item_pad = items
                        .first()
                        .map(|&j| " ".repeat(indent_of(lines[j])))
                        .unwrap_or_else(|| " ".repeat(grand + 2));
                    let mut first_is_mirror = false;
                    for (n, &j) in items.iter().enumerate() {
                        let (code, _) = split_comment(lines[j].trim_start()[2..].trim());
                        let v = unquote(code)?;
                        if same_endpoint(&v, &want.mirror) {
                            if n == 0 {
                                first_is_mirror = true;
                            } else {
                                replace[j] = Some(None);
                            }
                        }
                    }
                    if !first_is_mirror {
                        let at = items.first().copied().unwrap_or(e + 1);
                        before[at].push(format!("{item_pad}- {}", quoted(&want.mirror)));
                    }
                } else {
                    return None;
                }
            }
        }
        i = body_end;
    }
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        for l in &before[n] {
            out.push_str(l);
            out.push('\n');
        }
        match &replace[n] {
            None => {
                out.push_str(line);
                out.push('\n');
            }
            Some(Some(l)) => {
                out.push_str(l);
                out.push('\n');
            }
            Some(None) => {}
        }
    }
    for l in &before[lines.len()] {
        out.push_str(l);
        out.push('\n');
    }
    if !original.ends_with('\n') && !original.is_empty() && out.ends_with('\n') {
        // Keep the file's own ending unless lines were added after it.
        if before[lines.len()].is_empty() {
            out.pop();
        }
    }
    Some(out)
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

#[cfg(test)]
mod tests {
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
        let text =
            "mirrors:\n  '*':\n    endpoint: ['http://127.0.0.1:5050/', 'https://r.example']\n";
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
}

/// The fixtures in `testdata/`: a k3s and an rke2 registries.yaml as sites
/// write them, edited, compared with the `.expected` files.
#[cfg(test)]
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
