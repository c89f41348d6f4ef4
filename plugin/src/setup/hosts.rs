//! An existing `hosts.toml` merged with the one `config` writes: the
//! site's CA, client certificates, headers, `skip_verify` and other
//! `[host."..."]` entries are kept; the mirror's entry is put first (containerd
//! tries hosts in file order, `server` last) and `server` set when
//! `--upstream` names one. Comments and layout kept (toml_edit).

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table};

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("{}: not TOML, so it cannot be merged: {source} (move it away to have it written anew)", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml_edit::TomlError,
    },
    #[error("{}: `{key}` is not a table, so it cannot be merged (move the file away to have it written anew)", path.display())]
    NotATable { path: PathBuf, key: String },
}

/// `existing` (the file at `path`, which only names it in errors) with
/// `ours` (what `config` would write there alone) merged in.
pub fn merge_hosts(path: &Path, existing: &str, ours: &str) -> Result<String, HostsError> {
    let parse = |text: &str| {
        text.parse::<DocumentMut>()
            .map_err(|source| HostsError::Parse {
                path: path.to_path_buf(),
                source,
            })
    };
    let mut doc = parse(existing)?;
    let ours_doc: DocumentMut = ours.parse().expect("the generated hosts.toml is TOML");
    if let Some(server) = ours_doc.get("server") {
        match doc.get_mut("server") {
            Some(Item::Value(v)) => {
                // The value only: the comments around the site's line stay.
                let decor = v.decor().clone();
                let mut new = server.as_value().expect("server is a string").clone();
                *new.decor_mut() = decor;
                *v = new;
            }
            _ => {
                doc.insert("server", server.clone());
            }
        }
    }
    let Some(our_hosts) = ours_doc.get("host").and_then(Item::as_table) else {
        return Ok(doc.to_string());
    };
    let theirs: Vec<(String, Item)> = match doc.remove("host") {
        None => Vec::new(),
        Some(Item::Table(t)) => t.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        Some(_) => {
            return Err(HostsError::NotATable {
                path: path.to_path_buf(),
                key: "host".into(),
            })
        }
    };
    let first = theirs
        .iter()
        .filter_map(|(_, item)| item.as_table().and_then(Table::position))
        .min();
    let mut host = Table::new();
    host.set_implicit(true);
    for (key, item) in our_hosts.iter() {
        let mut item = item.clone();
        if let (Some(t), Some(pos)) = (item.as_table_mut(), first) {
            // Rendered in the position of the site's first host, before it.
            t.set_position(pos);
        }
        host.insert(key, item);
    }
    for (key, item) in theirs {
        if !our_hosts.contains_key(&key) {
            host.insert(&key, item);
        }
    }
    doc.insert("host", Item::Table(host));
    Ok(doc.to_string())
}

/// Whether the hosts.toml `text` sends credentials: an `Authorization`
/// header (any case) of the server (`[header]`) or of a host
/// (`[host."...".header]`), as `config --serving-token-file` writes. Such a
/// file is kept from the group and others ([`private_mode`]). A text that
/// is not TOML is not looked into.
pub fn carries_credentials(text: &str) -> bool {
    let Ok(doc) = text.parse::<DocumentMut>() else {
        return false;
    };
    let authorizes = |header: Option<&Item>| {
        header.and_then(Item::as_table_like).is_some_and(|h| {
            h.iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        })
    };
    authorizes(doc.get("header"))
        || doc
            .get("host")
            .and_then(Item::as_table_like)
            .is_some_and(|hosts| {
                hosts
                    .iter()
                    .any(|(_, h)| authorizes(h.as_table_like().and_then(|h| h.get("header"))))
            })
}

/// The mode of a file that carries credentials, from its `mode`: without
/// the group's and others' bits (0644 becomes 0600); `None` when it has
/// none to lose.
pub fn private_mode(mode: u32) -> Option<u32> {
    (mode & 0o077 != 0).then_some(mode & !0o077)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "# containerd registry hosts: the mirror first\n\
        server = \"https://harbor.example.internal\"\n\
        \n\
        # airgap-snapshotter's mirror\n\
        [host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\", \"resolve\"]\n";

    const SITE: &str = "# the site's file\n\
        server = \"https://registry-1.docker.io\"  # the real one\n\
        ca = \"/etc/ssl/site-ca.pem\"\n\
        \n\
        # the site's cache\n\
        [host.\"https://cache.example.internal\"]\n  capabilities = [\"pull\"]\n  ca = \"/etc/ssl/cache-ca.pem\"\n  \
        client = [[\"/etc/ssl/c.pem\", \"/etc/ssl/c.key\"]]\n\
        [host.\"https://cache.example.internal\".header]\n  authorization = \"Basic eDp5\"\n\
        \n\
        [host.\"https://other.example.internal\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n";

    fn hosts_in_order(text: &str) -> Vec<String> {
        // containerd's order is the file's: the order of the headers.
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("[host.\""))
            .filter(|l| l.ends_with("\"]"))
            .map(|l| l.trim_end_matches("\"]").to_string())
            .collect()
    }

    #[test]
    fn the_sites_file_keeps_its_hosts_ca_and_auth_and_ours_comes_first() {
        let path = Path::new("/x/hosts.toml");
        let merged = merge_hosts(path, SITE, OURS).unwrap();
        assert_eq!(
            hosts_in_order(&merged),
            [
                "http://127.0.0.1:5050",
                "https://cache.example.internal",
                "https://other.example.internal"
            ],
            "{merged}"
        );
        let v: toml::Table = toml::from_str(&merged).unwrap();
        assert_eq!(
            v["server"].as_str(),
            Some("https://harbor.example.internal")
        );
        assert_eq!(v["ca"].as_str(), Some("/etc/ssl/site-ca.pem"));
        let cache = &v["host"]["https://cache.example.internal"];
        assert_eq!(cache["ca"].as_str(), Some("/etc/ssl/cache-ca.pem"));
        assert_eq!(
            cache["header"]["authorization"].as_str(),
            Some("Basic eDp5")
        );
        assert!(cache["client"].is_array());
        assert_eq!(
            v["host"]["https://other.example.internal"]["skip_verify"].as_bool(),
            Some(true)
        );
        assert!(merged.contains("# the site's cache"), "{merged}");
        assert!(merged.contains("# the real one"), "{merged}");
        // A second merge changes nothing.
        assert_eq!(merge_hosts(path, &merged, OURS).unwrap(), merged);
    }

    #[test]
    fn without_an_upstream_the_sites_server_stays() {
        let ours = OURS.replace("server = \"https://harbor.example.internal\"\n", "");
        let merged = merge_hosts(Path::new("/x/hosts.toml"), SITE, &ours).unwrap();
        let v: toml::Table = toml::from_str(&merged).unwrap();
        assert_eq!(v["server"].as_str(), Some("https://registry-1.docker.io"));
        assert_eq!(hosts_in_order(&merged)[0], "http://127.0.0.1:5050");
    }

    #[test]
    fn our_entry_moves_first_when_it_was_not() {
        let site = "[host.\"https://cache.example.internal\"]\n  capabilities = [\"pull\"]\n\n\
             [host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\"]\n";
        let merged = merge_hosts(Path::new("/x/hosts.toml"), site, OURS).unwrap();
        assert_eq!(
            hosts_in_order(&merged),
            ["http://127.0.0.1:5050", "https://cache.example.internal"],
            "{merged}"
        );
        let v: toml::Table = toml::from_str(&merged).unwrap();
        assert_eq!(
            v["host"]["http://127.0.0.1:5050"]["capabilities"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn an_authorization_header_anywhere_is_a_credential() {
        assert!(!carries_credentials(OURS));
        // The site's basic auth on a host, in any case.
        assert!(carries_credentials(SITE));
        let token = format!(
            "{OURS}[host.\"https://10.0.0.1:5443\"]\n  capabilities = [\"pull\"]\n  \
             [host.\"https://10.0.0.1:5443\".header]\n    Authorization = \"Bearer t\"\n"
        );
        assert!(carries_credentials(&token));
        // Merged: still there.
        let merged = merge_hosts(Path::new("/x/hosts.toml"), &token, OURS).unwrap();
        assert!(carries_credentials(&merged), "{merged}");
        // The server's own header, an inline table.
        assert!(carries_credentials(
            "[header]\n  AUTHORIZATION = \"Bearer t\"\n"
        ));
        assert!(carries_credentials(
            "[host.\"https://a\"]\n  header = { authorization = \"Basic eDp5\" }\n"
        ));
        // Other headers are not credentials; not TOML is not looked into.
        assert!(!carries_credentials(
            "[host.\"https://a\".header]\n  x-trace = \"1\"\n"
        ));
        assert!(!carries_credentials("[host\n"));
    }

    #[test]
    fn a_private_mode_keeps_the_owners_bits_only() {
        assert_eq!(private_mode(0o644), Some(0o600));
        assert_eq!(private_mode(0o640), Some(0o600));
        assert_eq!(private_mode(0o604), Some(0o600));
        assert_eq!(private_mode(0o755), Some(0o700));
        assert_eq!(private_mode(0o600), None);
        assert_eq!(private_mode(0o400), None);
    }

    #[test]
    fn a_file_that_is_not_toml_is_named() {
        let err = merge_hosts(Path::new("/x/hosts.toml"), "[host\n", OURS).unwrap_err();
        assert!(err.to_string().contains("/x/hosts.toml"), "{err}");
        let err = merge_hosts(Path::new("/x/hosts.toml"), "host = 1\n", OURS).unwrap_err();
        assert!(err.to_string().contains("`host`"), "{err}");
    }
}
