//! Each `[[upstream]]`: reachable, TLS verified with its CA, credentials
//! accepted (`GET /v2/` ends in 200 after the token or basic flow).

use super::Check;
use crate::registry::UpstreamError;

/// The check for the upstream of `registry` at `endpoint`, from the
/// outcome of its ping ([`crate::registry::Upstream::ping`]).
pub fn ping_check(registry: &str, endpoint: &str, result: &Result<u16, UpstreamError>) -> Check {
    let name = format!("upstream {registry}");
    let table = format!("the [[upstream]] table with registry = {registry:?}");
    match result {
        Ok(200) => Check::ok(
            name,
            format!("{endpoint}/v2/ answers 200: reachable, TLS and credentials accepted"),
        ),
        Ok(status @ (401 | 403)) => Check::fail(
            name,
            format!("{endpoint}/v2/ answers {status}: the credentials are refused"),
            format!("fix username and password_file (or password) in {table}"),
        ),
        Ok(status) => Check::warn(
            name,
            format!("{endpoint}/v2/ answers {status}, not 200: is this a registry (v2 API)?"),
            format!("check endpoint and path_prefix in {table}"),
        ),
        Err(e) => {
            let msg = e.to_string();
            let tls = ["certificate", "tls", "TLS", "UnknownIssuer", "handshake"]
                .iter()
                .any(|w| msg.contains(w));
            let fix = if tls {
                format!("set ca_file to the CA that signed {endpoint}'s certificate in {table}")
            } else {
                format!("check endpoint, DNS, routes and firewall for {endpoint} ({table})")
            };
            Check::fail(name, msg, fix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn outcomes() {
        let ok = ping_check("docker.io", "https://h", &Ok(200));
        assert_eq!(ok.status, Status::Ok);
        let bad = ping_check("docker.io", "https://h", &Ok(401));
        assert_eq!(bad.status, Status::Fail);
        assert!(bad.detail.contains("credentials") && bad.fix.unwrap().contains("password_file"));
        let down = ping_check(
            "*",
            "https://h",
            &Err(UpstreamError::Unreachable {
                endpoint: "https://h".into(),
                reason: "invalid peer certificate: UnknownIssuer".into(),
            }),
        );
        assert_eq!(down.status, Status::Fail);
        assert!(down.fix.unwrap().contains("ca_file"));
        let down = ping_check(
            "*",
            "https://h",
            &Err(UpstreamError::Unreachable {
                endpoint: "https://h".into(),
                reason: "connection refused".into(),
            }),
        );
        assert!(down.fix.unwrap().contains("firewall"));
        assert_eq!(ping_check("*", "h", &Ok(404)).status, Status::Warn);
    }
}
