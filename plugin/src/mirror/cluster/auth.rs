//! Credentials of the cluster listener's clients: bearer tokens
//! (`NAME:TOKEN` lines, the token also taken as NAME's basic-auth
//! password) and htpasswd files of bcrypt hashes. Both files are read again
//! when they change (a `stat` per request), so a revoked token stops
//! working at once. Tokens are compared by their SHA-256, never as text; a
//! bcrypt check (tens of milliseconds) runs on a blocking thread and its
//! success is remembered for the file's version.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::digest::Digest;

/// Why a credentials file does not load.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} line {line}: expected NAME:TOKEN, a token of at least 16 characters without spaces",
        path.display()
    )]
    Token { path: PathBuf, line: usize },
    #[error(
        "{} line {line}: expected USER:HASH with a bcrypt hash (htpasswd -B); other hash kinds are refused",
        path.display()
    )]
    Htpasswd { path: PathBuf, line: usize },
}

/// A file's version: size, modification time, inode.
type Stamp = Option<(u64, std::time::SystemTime, u64)>;

/// A file read into `T`, read again when its stamp changes.
struct Watched<T> {
    path: PathBuf,
    parse: fn(&Path, &str) -> Result<T, CredentialsError>,
    state: Mutex<(Stamp, Arc<T>)>,
}

fn file_stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

impl<T> Watched<T> {
    fn new(
        path: &Path,
        parse: fn(&Path, &str) -> Result<T, CredentialsError>,
    ) -> Result<Self, CredentialsError> {
        let stamp = file_stamp(path);
        let value = parse(path, &read(path)?)?;
        Ok(Watched {
            path: path.to_path_buf(),
            parse,
            state: Mutex::new((stamp, Arc::new(value))),
        })
    }

    /// The current value (the previous one if the changed file does not
    /// parse: logged).
    fn get(&self) -> Arc<T> {
        let stamp = file_stamp(&self.path);
        let mut state = self.state.lock().unwrap();
        if stamp != state.0 {
            state.0 = stamp;
            match read(&self.path).and_then(|t| (self.parse)(&self.path, &t)) {
                Ok(v) => {
                    tracing::info!(file = %self.path.display(), "cluster listener: credentials file changed; reloaded");
                    state.1 = Arc::new(v);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cluster listener: changed credentials file does not load; keeping the previous credentials");
                }
            }
        }
        state.1.clone()
    }
}

fn read(path: &Path) -> Result<String, CredentialsError> {
    std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The `name:value` lines of a tokens or htpasswd file, numbered from 1:
/// blank lines and `#` comments left out; `None` for a line without `:`.
fn entries(text: &str) -> impl Iterator<Item = (usize, Option<(&str, &str)>)> {
    text.lines()
        .enumerate()
        .map(|(n, line)| (n + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| (n, line.split_once(':')))
}

/// Token hashes by name.
struct Tokens(HashMap<Digest, String>);

fn parse_tokens(path: &Path, text: &str) -> Result<Tokens, CredentialsError> {
    let mut map = HashMap::new();
    for (line, entry) in entries(text) {
        match entry {
            Some((name, token))
                if !name.trim().is_empty()
                    && token.trim().len() >= 16
                    && !token.trim().contains(char::is_whitespace) =>
            {
                map.insert(Digest::of(token.trim().as_bytes()), name.trim().to_string());
            }
            _ => {
                return Err(CredentialsError::Token {
                    path: path.to_path_buf(),
                    line,
                })
            }
        }
    }
    Ok(Tokens(map))
}

/// bcrypt hashes by user.
struct Htpasswd(HashMap<String, String>);

fn parse_htpasswd(path: &Path, text: &str) -> Result<Htpasswd, CredentialsError> {
    let mut map = HashMap::new();
    for (line, entry) in entries(text) {
        match entry {
            Some((user, hash)) if !user.is_empty() && hash.starts_with("$2") => {
                map.insert(user.to_string(), hash.to_string());
            }
            _ => {
                return Err(CredentialsError::Htpasswd {
                    path: path.to_path_buf(),
                    line,
                })
            }
        }
    }
    Ok(Htpasswd(map))
}

/// The credentials a listener accepts.
pub struct Credentials {
    tokens: Option<Watched<Tokens>>,
    htpasswd: Option<Watched<Htpasswd>>,
    /// (user, SHA-256 of user:password:hash) checked good.
    verified: Mutex<HashSet<Digest>>,
    /// Tokens handed out by the token endpoint: hash -> (user, until).
    minted: Mutex<HashMap<Digest, (String, Instant)>>,
}

/// How long a token of the token endpoint is good.
pub const MINTED_FOR: Duration = Duration::from_secs(3600);

impl Credentials {
    pub fn new(
        tokens: Option<&Path>,
        htpasswd: Option<&Path>,
    ) -> Result<Credentials, CredentialsError> {
        Ok(Credentials {
            tokens: tokens.map(|p| Watched::new(p, parse_tokens)).transpose()?,
            htpasswd: htpasswd
                .map(|p| Watched::new(p, parse_htpasswd))
                .transpose()?,
            verified: Mutex::new(HashSet::new()),
            minted: Mutex::new(HashMap::new()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_none() && self.htpasswd.is_none()
    }

    /// The client's name if the `Authorization` header carries valid
    /// credentials.
    pub async fn check(&self, authorization: &str) -> Option<String> {
        let (scheme, value) = authorization.trim().split_once(' ')?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let hash = Digest::of(value.as_bytes());
            if let Some((user, until)) = self.minted.lock().unwrap().get(&hash) {
                if Instant::now() < *until {
                    return Some(user.clone());
                }
            }
            let tokens = self.tokens.as_ref()?.get();
            return tokens.0.get(&hash).cloned();
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64_decode(value)?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        if let Some(tokens) = &self.tokens {
            if tokens
                .get()
                .0
                .get(&Digest::of(password.as_bytes()))
                .map(String::as_str)
                == Some(user)
            {
                return Some(user.to_string());
            }
        }
        let htpasswd = self.htpasswd.as_ref()?.get();
        let hash = htpasswd.0.get(user)?.clone();
        let key = Digest::of(format!("{user}\0{password}\0{hash}").as_bytes());
        if self.verified.lock().unwrap().contains(&key) {
            return Some(user.to_string());
        }
        let password = password.to_string();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if ok {
            let mut verified = self.verified.lock().unwrap();
            if verified.len() > 10_000 {
                verified.clear();
            }
            verified.insert(key);
            Some(user.to_string())
        } else {
            None
        }
    }
}

impl Credentials {
    /// A new token for `user` (the token endpoint's answer), good for
    /// [`MINTED_FOR`]; `None` if no randomness could be read.
    pub fn mint(&self, user: &str) -> Option<String> {
        use std::io::Read;
        let mut random = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .ok()?;
        let token = hex::encode(random);
        let now = Instant::now();
        let mut minted = self.minted.lock().unwrap();
        minted.retain(|_, (_, until)| *until > now);
        minted.insert(
            Digest::of(token.as_bytes()),
            (user.to_string(), now + MINTED_FOR),
        );
        Some(token)
    }
}

/// Standard base64 (basic auth), padding optional; `None` if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_basic_auth() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("a b").is_none());
    }

    #[tokio::test]
    async fn tokens_and_htpasswd_reload() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "# nodes\nnode-b:0123456789abcdef0123\n").unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret-pass", 4).unwrap();
        std::fs::write(&htpasswd, format!("cache:{hash}\n")).unwrap();
        let c = Credentials::new(Some(&tokens), Some(&htpasswd)).unwrap();
        assert_eq!(
            c.check("Bearer 0123456789abcdef0123").await.as_deref(),
            Some("node-b")
        );
        assert_eq!(c.check("Bearer 0123456789abcdef0124").await, None);
        // The token as node-b's basic password, and htpasswd users.
        let basic = |s: &str| format!("Basic {}", b64(s));
        assert_eq!(
            c.check(&basic("node-b:0123456789abcdef0123"))
                .await
                .as_deref(),
            Some("node-b")
        );
        assert_eq!(c.check(&basic("other:0123456789abcdef0123")).await, None);
        assert_eq!(
            c.check(&basic("cache:s3cret-pass")).await.as_deref(),
            Some("cache")
        );
        assert_eq!(
            c.check(&basic("cache:s3cret-pass")).await.as_deref(),
            Some("cache")
        );
        assert_eq!(c.check(&basic("cache:wrong")).await, None);
        // Revoked: a rewritten file takes effect at the next request.
        std::fs::write(&tokens, "node-c:fedcba9876543210fedcba\n").unwrap();
        assert_eq!(c.check("Bearer 0123456789abcdef0123").await, None);
        assert_eq!(
            c.check("Bearer fedcba9876543210fedcba").await.as_deref(),
            Some("node-c")
        );
        // A broken file keeps the previous credentials.
        std::fs::write(&tokens, "no colon on this line at all\n").unwrap();
        assert_eq!(
            c.check("Bearer fedcba9876543210fedcba").await.as_deref(),
            Some("node-c")
        );
        // At start a broken file is an error naming it and the line.
        let err = Credentials::new(Some(&tokens), None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tokens line 1"), "{err}");
        std::fs::write(&htpasswd, "cache:{SHA}abc\n").unwrap();
        let err = Credentials::new(None, Some(&htpasswd))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("bcrypt"), "{err}");
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }
}
