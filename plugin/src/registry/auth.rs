//! Authentication against an upstream registry: what to send before a
//! challenge, the `WWW-Authenticate` challenge itself, and the token flow.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Upstream, UpstreamError, SMALL_REQUEST_TIMEOUT};

#[derive(Clone)]
pub(super) enum Auth {
    None,
    Basic,
    Bearer(String),
}

impl Upstream {
    pub(super) fn credentials(&self) -> Option<(&str, &str)> {
        Some((
            self.username.as_deref()?,
            self.password.as_deref().unwrap_or(""),
        ))
    }

    /// What to send before any challenge: a cached token for the scope, or
    /// basic auth if the upstream asked for it before.
    pub(super) fn auth_for(&self, scope: &str) -> Auth {
        let mut tokens = self.tokens.lock().unwrap();
        match tokens.get(scope) {
            Some((token, until)) if *until > Instant::now() => return Auth::Bearer(token.clone()),
            Some(_) => {
                tokens.remove(scope);
            }
            None => {}
        }
        if self.basic.load(Ordering::Relaxed) && self.credentials().is_some() {
            Auth::Basic
        } else {
            Auth::None
        }
    }

    /// Drops `token` from the cache of `scope` (a 401 answered it), unless
    /// another request already replaced it.
    pub(super) fn forget_token(&self, scope: &str, token: &str) {
        let mut tokens = self.tokens.lock().unwrap();
        if tokens.get(scope).is_some_and(|(t, _)| t == token) {
            tokens.remove(scope);
        }
    }

    /// The token flow: `GET realm?service=..&scope=..`, with basic auth when
    /// there are credentials. Returns the token and how long to use it.
    pub(super) async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration), UpstreamError> {
        let mut params = vec![("scope", scope)];
        if let Some(s) = service {
            params.push(("service", s));
        }
        let url = reqwest::Url::parse_with_params(realm, &params).map_err(|e| {
            UpstreamError::BadContent {
                endpoint: self.endpoint.clone(),
                what: "token realm".into(),
                reason: e.to_string(),
            }
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::BadContent {
                endpoint: self.endpoint.clone(),
                what: "token realm".into(),
                reason: format!("scheme {} is not http(s)", url.scheme()),
            });
        }
        let mut req = self.client.get(url).timeout(SMALL_REQUEST_TIMEOUT);
        if let Some((u, p)) = self.credentials() {
            req = req.basic_auth(u, Some(p));
        }
        self.metrics.requests.inc();
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            tracing::warn!(endpoint = %self.endpoint, status = %resp.status(), "upstream token service refused a token (check the credentials of this [[upstream]])");
            return Err(self.status_error("token request", resp.status()));
        }
        let body = self.read_limited(resp, "token request").await?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| UpstreamError::BadContent {
                endpoint: self.endpoint.clone(),
                what: "token answer".into(),
                reason: e.to_string(),
            })?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| UpstreamError::BadContent {
                endpoint: self.endpoint.clone(),
                what: "token answer".into(),
                reason: "no token in it".into(),
            })?;
        // Spec default 60 s; stop using it a little before it expires.
        let secs = answer.expires_in.unwrap_or(60).max(10);
        Ok((token, Duration::from_secs(secs - secs / 10)))
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

// Parsed by hand: the `http-auth` crate follows RFC 7235 strictly and
// rejects an unquoted realm URL (`Bearer realm=https://t/x`), which
// containerd's own parser (remotes/docker/auth) accepts, so we do too.
impl Challenge {
    pub(super) fn parse(value: &str) -> Option<Challenge> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `k="v", k2=v2` with quoted values that may hold commas.
fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm=https://t/x"#),
            Some(Challenge::Bearer {
                realm: "https://t/x".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
    }
}
