//! containerd's filter syntax (package `filters`), as `List` receives it.
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath (operator value)
//! fieldpath := field ('.' field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+
//! ```
//! The selectors of one string must all match; a list of strings matches if
//! any of them does. Without an operator a selector tests for presence.

use regex::Regex;

use super::SnapshotError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Present,
    Equal,
    NotEqual,
    Matches,
}

#[derive(Debug, Clone)]
struct Selector {
    fieldpath: Vec<String>,
    operator: Operator,
    value: String,
    regex: Option<Regex>,
}

/// A parsed list of filters: `any(all(selectors))`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    alternatives: Vec<Vec<Selector>>,
}

/// What a filter looks at: a field path (`kind`, `labels.foo`) to a value,
/// `None` if the object has no such field.
pub trait Fields {
    fn field(&self, path: &[String]) -> Option<&str>;
}

impl Filter {
    /// Parses containerd filter strings; an empty list matches everything.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Self, SnapshotError> {
        let mut alternatives = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.is_empty() {
                // containerd: Parse("") is Always.
                alternatives.push(Vec::new());
                continue;
            }
            let selectors = Parser::new(f).selectors().map_err(|err| {
                SnapshotError::InvalidArgument(format!("filters: parse error: [{f}]: {err}"))
            })?;
            alternatives.push(selectors);
        }
        Ok(Filter { alternatives })
    }

    pub fn matches(&self, obj: &impl Fields) -> bool {
        if self.alternatives.is_empty() {
            return true;
        }
        self.alternatives
            .iter()
            .any(|all| all.iter().all(|s| s.matches(obj)))
    }
}

impl Selector {
    fn matches(&self, obj: &impl Fields) -> bool {
        let value = obj.field(&self.fieldpath);
        match self.operator {
            Operator::Present => value.is_some(),
            Operator::Equal => value == Some(self.value.as_str()),
            Operator::NotEqual => value.unwrap_or("") != self.value,
            Operator::Matches => match &self.regex {
                Some(re) => re.is_match(value.unwrap_or("")),
                None => false,
            },
        }
    }
}

/// Why a filter string does not parse (the messages are containerd's).
#[derive(Debug, PartialEq, thiserror::Error)]
enum ParseError {
    #[error("unexpected null")]
    Null,
    #[error("quoted literal not terminated")]
    Unterminated,
    #[error("unexpected input: {0}")]
    UnexpectedInput(char),
    #[error("unsupported operator {0:?}")]
    UnsupportedOperator(String),
    #[error(r#"expected an operator ("=="|"!="|"~=")"#)]
    ExpectedOperator,
    #[error("unexpected EOF")]
    UnexpectedEof,
    #[error("expected value or quoted")]
    ExpectedValue,
    #[error("expected field or quoted")]
    ExpectedField,
    #[error("invalid regular expression: {0}")]
    Regex(#[from] regex::Error),
    #[error("empty quoted string")]
    EmptyQuoted,
    #[error("invalid quote encountered")]
    InvalidQuote,
    #[error("unquoting failed: bad escape")]
    BadEscape,
    #[error("unquoting failed: illegal escape sequence")]
    IllegalEscape,
}

#[derive(Debug, PartialEq)]
enum Token {
    Eof,
    Quoted(String),
    Value(String),
    Field(String),
    Separator(char),
    Operator(String),
    Illegal(ParseError),
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
    /// After an operator, the next bare word is a value (may hold `.` etc).
    value_next: bool,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            input,
            pos: 0,
            value_next: false,
        }
    }

    fn peek_char(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek_char() {
            if c.is_whitespace() {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
    }

    /// The next significant character, without consuming it.
    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.peek_char()
    }

    fn scan(&mut self) -> Token {
        self.skip_space();
        let Some(c) = self.peek_char() else {
            return Token::Eof;
        };
        let start = self.pos;
        if c == '\0' {
            return Token::Illegal(ParseError::Null);
        }
        if matches!(c, '"' | '/' | '|') {
            self.pos += 1;
            let mut escaped = false;
            loop {
                match self.peek_char() {
                    None | Some('\n') => return Token::Illegal(ParseError::Unterminated),
                    Some(ch) => {
                        self.pos += ch.len_utf8();
                        if escaped {
                            escaped = false;
                        } else if ch == '\\' {
                            escaped = true;
                        } else if ch == c {
                            break;
                        }
                    }
                }
            }
            return Token::Quoted(self.input[start..self.pos].to_string());
        }
        if c == ',' || c == '.' {
            self.pos += 1;
            self.value_next = false;
            return Token::Separator(c);
        }
        if matches!(c, '=' | '!' | '~') {
            while let Some(ch) = self.peek_char() {
                if matches!(ch, '=' | '!' | '~') {
                    self.pos += 1;
                } else {
                    break;
                }
            }
            self.value_next = true;
            return Token::Operator(self.input[start..self.pos].to_string());
        }
        if self.value_next {
            while let Some(ch) = self.peek_char() {
                if ch == ',' || ch.is_whitespace() || ch.is_control() {
                    break;
                }
                self.pos += ch.len_utf8();
            }
            self.value_next = false;
            return Token::Value(self.input[start..self.pos].to_string());
        }
        if c == '_' || c.is_ascii_alphanumeric() {
            while let Some(ch) = self.peek_char() {
                if ch == '_' || ch.is_ascii_alphanumeric() {
                    self.pos += 1;
                } else {
                    break;
                }
            }
            return Token::Field(self.input[start..self.pos].to_string());
        }
        self.pos += c.len_utf8();
        Token::Illegal(ParseError::UnexpectedInput(c))
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, ParseError> {
        let mut out = vec![self.selector()?];
        loop {
            match self.peek() {
                None => return Ok(out),
                Some(',') => {
                    self.scan();
                    out.push(self.selector()?);
                }
                Some(c) => return Err(ParseError::UnexpectedInput(c)),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, ParseError> {
        let fieldpath = self.fieldpath()?;
        if matches!(self.peek(), None | Some(',')) {
            return Ok(Selector {
                fieldpath,
                operator: Operator::Present,
                value: String::new(),
                regex: None,
            });
        }
        let operator = match self.scan() {
            Token::Operator(op) => match op.as_str() {
                "==" => Operator::Equal,
                "!=" => Operator::NotEqual,
                "~=" => Operator::Matches,
                other => return Err(ParseError::UnsupportedOperator(other.to_string())),
            },
            Token::Illegal(err) => return Err(err),
            _ => return Err(ParseError::ExpectedOperator),
        };
        let value = match self.scan() {
            Token::Value(v) | Token::Field(v) => v,
            Token::Quoted(q) => unquote(&q, operator == Operator::Matches)?,
            Token::Illegal(err) => return Err(err),
            Token::Eof => return Err(ParseError::UnexpectedEof),
            _ => return Err(ParseError::ExpectedValue),
        };
        let regex = if operator == Operator::Matches {
            Some(Regex::new(&value)?)
        } else {
            None
        };
        Ok(Selector {
            fieldpath,
            operator,
            value,
            regex,
        })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, ParseError> {
        let mut path = vec![self.field()?];
        while self.peek() == Some('.') {
            self.scan();
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String, ParseError> {
        match self.scan() {
            Token::Field(f) => Ok(f),
            Token::Quoted(q) => unquote(&q, false),
            Token::Illegal(err) => Err(err),
            _ => Err(ParseError::ExpectedField),
        }
    }
}

/// Go string unquoting, with `/` and `|` as extra quotes for regular
/// expressions (where they are taken literally, backslashes included).
fn unquote(quoted: &str, allow_alt: bool) -> Result<String, ParseError> {
    let quote = quoted.chars().next().ok_or(ParseError::EmptyQuoted)?;
    if quote != '"' && !allow_alt {
        return Err(ParseError::InvalidQuote);
    }
    let inner = &quoted[1..quoted.len() - 1];
    if quote != '"' {
        return Ok(inner.to_string());
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let esc = chars.next().ok_or(ParseError::BadEscape)?;
        let simple = match esc {
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{b}'),
            '\\' | '"' => Some(esc),
            _ => None,
        };
        if let Some(ch) = simple {
            out.push(ch);
            continue;
        }
        let (digits, radix) = match esc {
            'x' => (2, 16),
            'u' => (4, 16),
            'U' => (8, 16),
            '0'..='7' => (2, 8),
            _ => return Err(ParseError::IllegalEscape),
        };
        let mut hex: String = if radix == 8 {
            esc.to_string()
        } else {
            String::new()
        };
        hex.extend(chars.by_ref().take(digits));
        let v = u32::from_str_radix(&hex, radix).map_err(|_| ParseError::BadEscape)?;
        out.push(char::from_u32(v).ok_or(ParseError::BadEscape)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Obj(HashMap<&'static str, &'static str>);

    impl Fields for Obj {
        fn field(&self, path: &[String]) -> Option<&str> {
            self.0.get(path.join(".").as_str()).copied()
        }
    }

    fn obj(pairs: &[(&'static str, &'static str)]) -> Obj {
        Obj(pairs.iter().copied().collect())
    }

    fn matches(filters: &[&str], o: &Obj) -> bool {
        Filter::parse_all(filters).unwrap().matches(o)
    }

    #[test]
    fn the_filters_containerd_sends() {
        let target = obj(&[
            ("kind", "committed"),
            ("parent", "ns/1/sha256:aa"),
            ("labels.containerd.io/snapshot.ref", "sha256:bb"),
        ]);
        // metadata/snapshot.go, after ALREADY_EXISTS from Prepare.
        let f = r#"labels."containerd.io/snapshot.ref"==sha256:bb,parent=="ns/1/sha256:aa""#;
        assert!(matches(&[f], &target));
        let f = r#"labels."containerd.io/snapshot.ref"==sha256:bb,parent=="ns/2/sha256:aa""#;
        assert!(!matches(&[f], &target));
    }

    #[test]
    fn the_testsuite_walk_cases() {
        let a = obj(&[
            ("kind", "active"),
            ("name", "a-wl"),
            ("parent", "p-wl"),
            ("labels.l", "2"),
        ]);
        let v = obj(&[("kind", "view"), ("name", "v"), ("parent", "p")]);
        let p = obj(&[("kind", "committed"), ("name", "p"), ("parent", "")]);
        assert!(matches(&["kind==active"], &a));
        assert!(!matches(&["kind==active"], &v));
        assert!(matches(&["name==p", "name==a-np-wl"], &p));
        assert!(matches(&["name==a-wl,labels.l"], &a));
        assert!(!matches(&["name==a-wl,labels.l"], &v));
        assert!(matches(&["parent==p"], &v));
        assert!(matches(&[r#"parent!="""#], &v));
        assert!(!matches(&[r#"parent!="""#], &p));
        assert!(matches(&["labels.l==2"], &a));
        assert!(!matches(&["labels.l==3"], &a));
        // A missing field is "" for != (containerd's semantics).
        assert!(matches(&["labels.l!=2"], &v));
        assert!(matches(&["name~=^a-"], &a));
        assert!(matches(&["name~=/^a-.*$/"], &a));
        assert!(matches(&[] as &[&str], &a));
        assert!(matches(&[""], &a));
    }

    #[test]
    fn values_may_hold_dots_and_colons() {
        let o = obj(&[("name", "ns/1/sha256:ab.c")]);
        assert!(matches(&["name==ns/1/sha256:ab.c"], &o));
        assert!(matches(&[" name == ns/1/sha256:ab.c "], &o));
    }

    #[test]
    fn quoted_values_are_unquoted() {
        let o = obj(&[("labels.a b", "x\"y\n")]);
        assert!(matches(&[r#"labels."a b"=="x\"y\n""#], &o));
    }

    #[test]
    fn bad_filters_are_invalid_arguments() {
        for bad in [
            "kind==",
            "==x",
            "kind=x",
            "kind===x",
            "kind==a b",
            "labels.",
            "name~=(",
            "a,",
        ] {
            match Filter::parse_all(&[bad]) {
                Err(SnapshotError::InvalidArgument(_)) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
