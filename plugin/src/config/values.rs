//! The value types of config fields and flags that are more than a string:
//! listen addresses (or `off`), byte counts with units, containerd
//! namespace names.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that does not parse: said with the text given, so that the
/// config error (or clap's) names the field and shows what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is neither `off` nor an address like 127.0.0.1:5050")]
    Listen(String),
    #[error("{0:?} is not a byte count")]
    NotBytes(String),
    #[error("unknown unit {unit:?} in {value:?}")]
    Unit { unit: String, value: String },
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// A listen address (the mirror's, the metrics'), or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    Addr(SocketAddr),
}

impl FromStr for Listen {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.parse()
            .map(Listen::Addr)
            .map_err(|_| ValueError::Listen(s.to_string()))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::Addr(a) => write!(f, "{a}"),
        }
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// containerd's namespace rule (`namespaces.Validate`): labels of letters
/// and digits joined by single `.`, `_` or `-`, at most 76 bytes.
pub(super) fn valid_namespace(s: &str) -> bool {
    s.len() <= 76
        && !s.is_empty()
        && s.split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Parses a byte count: `1048576`, `512M`, `512MiB`, `10G` (units binary).
pub fn parse_bytes(s: &str) -> Result<u64, ValueError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| ValueError::NotBytes(s.to_string()))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(ValueError::Unit {
                unit: other.to_string(),
                value: s.to_string(),
            })
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| ValueError::TooLarge(s.to_string()))
}

/// A duration as `humantime` writes it (`5m`, `1h 30m`).
pub(super) fn serialize_duration<S: Serializer>(
    v: &std::time::Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*v))
}

/// A duration as `humantime` reads it (`90s`, `5m`, `2m 30s`).
pub(super) fn deserialize_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::time::Duration, D::Error> {
    humantime::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

pub(super) fn serialize_bytes<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(*v)
}

pub(super) fn deserialize_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bytes {
        N(u64),
        S(String),
    }
    match Bytes::deserialize(d)? {
        Bytes::N(n) => Ok(n),
        Bytes::S(s) => parse_bytes(&s).map_err(serde::de::Error::custom),
    }
}
