//! Validated names: vcluster and project names, and Kubernetes label keys and values.
//!
//! Every name that reaches the store, a Kubernetes object or a URL must already be known to be
//! well formed, so names are newtypes that can only be built through validation (including when
//! deserialized). Validation failures are reported as [`NameError`]s whose messages say exactly
//! what is wrong, so they can be shown to users as-is.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Maximum length of the name part of a label key, and of a label value.
pub const LABEL_NAME_MAX_LEN: usize = 63;

/// Maximum length of the DNS-1123 subdomain prefix of a label key (the part before `/`).
pub const LABEL_PREFIX_MAX_LEN: usize = 253;

/// Longest input echoed back verbatim in an error message; longer inputs are shortened.
const ECHO_MAX_CHARS: usize = 64;

/// The kind of name being validated; it is named in every [`NameError`] message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// A [`VClusterName`].
    VClusterName,
    /// A [`ProjectName`].
    ProjectName,
    /// A whole label key (also used for its name part when the key has no prefix).
    LabelKey,
    /// The DNS-1123 subdomain prefix of a label key, before the `/`.
    LabelKeyPrefix,
    /// The name part of a label key that has a prefix, after the `/`.
    LabelKeyName,
    /// A label value.
    LabelValue,
    /// The name of a host cluster ([`validate_host_name`]).
    HostName,
}

impl NameKind {
    /// Human description of the characters this kind accepts.
    fn allowed_chars(self) -> &'static str {
        match self {
            NameKind::VClusterName | NameKind::ProjectName | NameKind::HostName => {
                "lowercase letters, digits and '-'"
            }
            NameKind::LabelKeyPrefix => "lowercase letters, digits, '-' and '.'",
            NameKind::LabelKey | NameKind::LabelKeyName | NameKind::LabelValue => {
                "letters, digits, '-', '_' and '.'"
            }
        }
    }

    /// Human description of the characters this kind may start and end with.
    fn edge_chars(self) -> &'static str {
        match self {
            NameKind::VClusterName
            | NameKind::ProjectName
            | NameKind::HostName
            | NameKind::LabelKeyPrefix => "a lowercase letter or digit",
            NameKind::LabelKey | NameKind::LabelKeyName | NameKind::LabelValue => {
                "a letter or digit"
            }
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::VClusterName => "vcluster name",
            NameKind::ProjectName => "project name",
            NameKind::LabelKey => "label key",
            NameKind::LabelKeyPrefix => "label key prefix",
            NameKind::LabelKeyName => "label key name part",
            NameKind::LabelValue => "label value",
            NameKind::HostName => "host name",
        })
    }
}

/// Why a name, label key or label value was rejected.
///
/// `value` fields hold the offending input, shortened to 64 characters (plus `…`) when longer;
/// `position` fields are 0-based character indexes into the unshortened input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The input was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// What was being validated.
        kind: NameKind,
    },
    /// The input was longer than allowed.
    #[error("{kind} {value:?} is invalid: must be at most {max} characters (got {got})")]
    TooLong {
        /// What was being validated.
        kind: NameKind,
        /// The offending input (possibly shortened).
        value: String,
        /// The maximum length in characters.
        max: usize,
        /// The actual length in characters.
        got: usize,
    },
    /// The input contained a character that is never allowed for this kind.
    #[error(
        "{kind} {value:?} is invalid: character {ch:?} at position {position} is not allowed \
         (use {})",
        .kind.allowed_chars()
    )]
    InvalidChar {
        /// What was being validated.
        kind: NameKind,
        /// The offending input (possibly shortened).
        value: String,
        /// The first disallowed character.
        ch: char,
        /// 0-based character index of `ch`.
        position: usize,
    },
    /// The input contained uppercase letters where only lowercase ones are allowed.
    #[error("{kind} {value:?} is invalid: uppercase letters are not allowed (try {suggestion:?})")]
    Uppercase {
        /// What was being validated.
        kind: NameKind,
        /// The offending input (possibly shortened).
        value: String,
        /// The input converted to lowercase (possibly shortened).
        suggestion: String,
    },
    /// The input started or ended with a character that may only appear inside it.
    #[error("{kind} {value:?} is invalid: must start and end with {}", .kind.edge_chars())]
    BadEdge {
        /// What was being validated.
        kind: NameKind,
        /// The offending input (possibly shortened).
        value: String,
    },
    /// A '.'-separated part of a DNS subdomain was empty or did not start and end with a
    /// lowercase letter or digit.
    #[error(
        "{kind} {value:?} is invalid: each '.'-separated part must be non-empty and start and \
         end with {} (found {segment:?})",
        .kind.edge_chars()
    )]
    BadSegment {
        /// What was being validated.
        kind: NameKind,
        /// The offending input (possibly shortened).
        value: String,
        /// The first offending '.'-separated part (possibly shortened).
        segment: String,
    },
}

/// Shortens `s` for inclusion in an error message.
fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_MAX_CHARS) {
        Some((cut, _)) => s
            .get(..cut)
            .map_or_else(String::new, |head| format!("{head}…")),
        None => s.to_owned(),
    }
}

/// Checks emptiness and the length limit shared by all kinds.
fn check_len(kind: NameKind, value: &str, max: usize) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { kind });
    }
    let got = value.chars().count();
    if got > max {
        return Err(NameError::TooLong {
            kind,
            value: echo(value),
            max,
            got,
        });
    }
    Ok(())
}

/// Reports the first character for which `allowed` is false.
fn check_chars(kind: NameKind, value: &str, allowed: fn(char) -> bool) -> Result<(), NameError> {
    match value.chars().enumerate().find(|&(_, ch)| !allowed(ch)) {
        Some((position, ch)) => Err(NameError::InvalidChar {
            kind,
            value: echo(value),
            ch,
            position,
        }),
        None => Ok(()),
    }
}

/// Rejects uppercase ASCII letters, suggesting the lowercase spelling.
fn check_lowercase(kind: NameKind, value: &str) -> Result<(), NameError> {
    if value.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(NameError::Uppercase {
            kind,
            value: echo(value),
            suggestion: echo(&value.to_ascii_lowercase()),
        });
    }
    Ok(())
}

/// Checks that the first and last characters satisfy `edge`.
fn check_edges(kind: NameKind, value: &str, edge: fn(char) -> bool) -> Result<(), NameError> {
    if value.starts_with(edge) && value.ends_with(edge) {
        Ok(())
    } else {
        Err(NameError::BadEdge {
            kind,
            value: echo(value),
        })
    }
}

/// Whether `ch` is a lowercase ASCII letter or an ASCII digit.
fn is_lower_alnum(ch: char) -> bool {
    ch.is_ascii_lowercase() || ch.is_ascii_digit()
}

/// Validates a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`) of at most `max` characters.
fn validate_dns_label(kind: NameKind, value: &str, max: usize) -> Result<(), NameError> {
    check_len(kind, value, max)?;
    check_chars(kind, value, |ch| ch.is_ascii_alphanumeric() || ch == '-')?;
    check_lowercase(kind, value)?;
    check_edges(kind, value, is_lower_alnum)
}

/// Validates a DNS-1123 subdomain: dot-separated DNS-1123 labels, at most `max` characters.
fn validate_dns_subdomain(kind: NameKind, value: &str, max: usize) -> Result<(), NameError> {
    check_len(kind, value, max)?;
    check_chars(kind, value, |ch| {
        ch.is_ascii_alphanumeric() || ch == '-' || ch == '.'
    })?;
    check_lowercase(kind, value)?;
    check_edges(kind, value, is_lower_alnum)?;
    let bad = value
        .split('.')
        .find(|seg| !(seg.starts_with(is_lower_alnum) && seg.ends_with(is_lower_alnum)));
    match bad {
        Some(segment) => Err(NameError::BadSegment {
            kind,
            value: echo(value),
            segment: echo(segment),
        }),
        None => Ok(()),
    }
}

/// Validates a Kubernetes "qualified name" part: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn validate_qualified_part(kind: NameKind, value: &str) -> Result<(), NameError> {
    check_len(kind, value, LABEL_NAME_MAX_LEN)?;
    check_chars(kind, value, |ch| {
        ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')
    })?;
    check_edges(kind, value, |ch| ch.is_ascii_alphanumeric())
}

/// Validates a Kubernetes label key: an optional DNS-1123 subdomain prefix (at most 253
/// characters) followed by `/`, then a name of 1 to 63 characters from `[A-Za-z0-9._-]` that
/// starts and ends with a letter or digit.
pub fn validate_label_key(key: &str) -> Result<(), NameError> {
    match key.split_once('/') {
        None => validate_qualified_part(NameKind::LabelKey, key),
        Some((prefix, name)) => {
            validate_dns_subdomain(NameKind::LabelKeyPrefix, prefix, LABEL_PREFIX_MAX_LEN)?;
            validate_qualified_part(NameKind::LabelKeyName, name)
        }
    }
}

/// Validates a Kubernetes label value: empty, or 1 to 63 characters from `[A-Za-z0-9._-]` that
/// start and end with a letter or digit.
pub fn validate_label_value(value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Ok(());
    }
    validate_qualified_part(NameKind::LabelValue, value)
}

/// Longest host-cluster name, in characters.
pub const HOST_NAME_MAX_LEN: usize = 63;

/// Validates the name of a host cluster (a vcluster's `spec.host`, a `--kube-host NAME`):
/// a DNS-1123 label of 1 to 63 characters.
pub fn validate_host_name(value: &str) -> Result<(), NameError> {
    validate_dns_label(NameKind::HostName, value, HOST_NAME_MAX_LEN)
}

/// Defines a string newtype validated as a DNS-1123 label of bounded length.
macro_rules! dns_label_name {
    ($(#[$meta:meta])* $name:ident, $kind:expr, $max:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Maximum length of this name, in characters.
            pub const MAX_LEN: usize = $max;

            /// Validates `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                validate_dns_label($kind, &value, Self::MAX_LEN)?;
                Ok(Self(value))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Unwraps the name into its `String`.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;

            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }
    };
}

dns_label_name!(
    /// Name of a virtual cluster: a DNS-1123 label of 1 to 40 characters (lowercase letters,
    /// digits and '-', starting and ending with a letter or digit).
    ///
    /// The limit is below the 63 of a plain label because the name is embedded, with a suffix,
    /// in the names of the Kubernetes objects backing the vcluster.
    VClusterName,
    NameKind::VClusterName,
    40
);

dns_label_name!(
    /// Name of a project: a DNS-1123 label of 1 to 63 characters (lowercase letters, digits and
    /// '-', starting and ending with a letter or digit).
    ProjectName,
    NameKind::ProjectName,
    63
);

impl ProjectName {
    /// The project that vclusters belong to when none is given: `default`.
    pub fn default_project() -> Self {
        Self("default".to_owned())
    }
}

impl Default for ProjectName {
    /// Same as [`ProjectName::default_project`].
    fn default() -> Self {
        Self::default_project()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vc_err(s: &str) -> NameError {
        match VClusterName::new(s) {
            Ok(name) => panic!("{s:?} should be rejected, got {name:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn vcluster_names_accept_valid_labels() {
        let forty = "a".repeat(40);
        for s in [
            "a",
            "0",
            "dev",
            "team-a",
            "a1",
            "1a",
            "a-b-c",
            "x--y",
            "123",
            forty.as_str(),
        ] {
            let name = VClusterName::new(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(name.as_str(), s);
            assert_eq!(name.to_string(), s);
            assert_eq!(name.as_ref(), s);
            assert_eq!(s.parse::<VClusterName>().as_ref(), Ok(&name));
            assert_eq!(VClusterName::try_from(s).as_ref(), Ok(&name));
            assert_eq!(VClusterName::try_from(s.to_owned()).as_ref(), Ok(&name));
            assert_eq!(String::from(name.clone()), s);
            assert_eq!(name.into_string(), s);
        }
    }

    #[test]
    fn vcluster_name_errors_are_specific() {
        assert_eq!(
            vc_err(""),
            NameError::Empty {
                kind: NameKind::VClusterName
            }
        );
        assert_eq!(
            vc_err(&"a".repeat(41)),
            NameError::TooLong {
                kind: NameKind::VClusterName,
                value: "a".repeat(41),
                max: 40,
                got: 41
            }
        );
        assert_eq!(
            vc_err("Team_A"),
            NameError::InvalidChar {
                kind: NameKind::VClusterName,
                value: "Team_A".into(),
                ch: '_',
                position: 4
            }
        );
        assert_eq!(
            vc_err("Team-A"),
            NameError::Uppercase {
                kind: NameKind::VClusterName,
                value: "Team-A".into(),
                suggestion: "team-a".into()
            }
        );
        for s in ["-a", "a-", "-", "--", "-ab-"] {
            assert_eq!(
                vc_err(s),
                NameError::BadEdge {
                    kind: NameKind::VClusterName,
                    value: s.into()
                },
                "{s:?}"
            );
        }
        for (s, ch, position) in [
            ("a.b", '.', 1),
            ("a b", ' ', 1),
            ("ab/", '/', 2),
            ("héllo", 'é', 1),
            ("a\u{0}", '\u{0}', 1),
            ("日本", '日', 0),
            ("a_b", '_', 1),
        ] {
            assert_eq!(
                vc_err(s),
                NameError::InvalidChar {
                    kind: NameKind::VClusterName,
                    value: s.into(),
                    ch,
                    position
                },
                "{s:?}"
            );
        }
    }

    #[test]
    fn vcluster_name_length_counts_characters_not_bytes() {
        // 40 characters but 80 bytes: passes the length check, fails on the character.
        let s = "é".repeat(40);
        assert!(matches!(
            vc_err(&s),
            NameError::InvalidChar {
                ch: 'é',
                position: 0,
                ..
            }
        ));
        let s = "é".repeat(41);
        assert!(matches!(vc_err(&s), NameError::TooLong { got: 41, .. }));
    }

    #[test]
    fn error_messages_are_human_readable() {
        assert_eq!(
            vc_err("Team_A").to_string(),
            "vcluster name \"Team_A\" is invalid: character '_' at position 4 is not allowed \
             (use lowercase letters, digits and '-')"
        );
        assert_eq!(
            vc_err(&"b".repeat(41)).to_string(),
            format!(
                "vcluster name \"{}\" is invalid: must be at most 40 characters (got 41)",
                "b".repeat(41)
            )
        );
        assert_eq!(vc_err("").to_string(), "vcluster name must not be empty");
        assert_eq!(
            vc_err("a-").to_string(),
            "vcluster name \"a-\" is invalid: must start and end with a lowercase letter or digit"
        );
        assert_eq!(
            vc_err("Dev").to_string(),
            "vcluster name \"Dev\" is invalid: uppercase letters are not allowed (try \"dev\")"
        );
        assert_eq!(
            ProjectName::new("").map_err(|e| e.to_string()),
            Err("project name must not be empty".to_owned())
        );
        assert_eq!(
            validate_label_value("-x").map_err(|e| e.to_string()),
            Err("label value \"-x\" is invalid: must start and end with a letter or digit".into())
        );
        assert_eq!(
            validate_label_key("a b").map_err(|e| e.to_string()),
            Err(
                "label key \"a b\" is invalid: character ' ' at position 1 is not allowed \
                 (use letters, digits, '-', '_' and '.')"
                    .into()
            )
        );
    }

    #[test]
    fn long_inputs_are_shortened_in_errors() {
        let long = "x".repeat(10_000);
        let err = vc_err(&long);
        assert_eq!(
            err,
            NameError::TooLong {
                kind: NameKind::VClusterName,
                value: format!("{}…", "x".repeat(64)),
                max: 40,
                got: 10_000
            }
        );
        assert!(err.to_string().len() < 200, "{err}");
        // Multi-byte characters are cut on a character boundary.
        let long = "ü".repeat(100);
        let NameError::TooLong { value, .. } = vc_err(&long) else {
            panic!("expected TooLong");
        };
        assert_eq!(value, format!("{}…", "ü".repeat(64)));
        // Exactly 64 characters are echoed unchanged.
        assert_eq!(echo(&"y".repeat(64)), "y".repeat(64));
    }

    #[test]
    fn project_names() {
        assert_eq!(ProjectName::default_project().as_str(), "default");
        assert_eq!(ProjectName::default(), ProjectName::default_project());
        assert_eq!(
            ProjectName::new("default"),
            Ok(ProjectName::default_project())
        );
        let max = "p".repeat(63);
        assert_eq!(ProjectName::new(max.as_str()).map(String::from), Ok(max));
        assert_eq!(
            ProjectName::new("p".repeat(64)),
            Err(NameError::TooLong {
                kind: NameKind::ProjectName,
                value: "p".repeat(64),
                max: 63,
                got: 64
            })
        );
        // 41..=63 characters: fine for a project, too long for a vcluster.
        let fifty = "q".repeat(50);
        assert!(ProjectName::new(fifty.as_str()).is_ok());
        assert!(VClusterName::new(fifty.as_str()).is_err());
        assert_eq!(
            "My_Project".parse::<ProjectName>(),
            Err(NameError::InvalidChar {
                kind: NameKind::ProjectName,
                value: "My_Project".into(),
                ch: '_',
                position: 2
            })
        );
        assert!(matches!(
            ProjectName::try_from("proj-"),
            Err(NameError::BadEdge {
                kind: NameKind::ProjectName,
                ..
            })
        ));
    }

    #[test]
    fn names_order_and_hash_like_strings() {
        use std::collections::HashSet;
        let mut names: Vec<VClusterName> = ["b", "a10", "a2", "a"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        names.sort();
        let sorted: Vec<&str> = names.iter().map(VClusterName::as_str).collect();
        assert_eq!(sorted, ["a", "a10", "a2", "b"]);
        let set: HashSet<VClusterName> = names.into_iter().collect();
        assert!(set.contains("a2"));
        assert!(!set.contains("c"));
    }

    #[test]
    fn serde_roundtrip_and_validation() {
        let name = VClusterName::new("team-a").expect("valid");
        assert_eq!(
            serde_json::to_string(&name).ok().as_deref(),
            Some("\"team-a\"")
        );
        let back: VClusterName = serde_json::from_str("\"team-a\"").expect("valid json name");
        assert_eq!(back, name);

        let err = serde_json::from_str::<VClusterName>("\"Team_A\"").expect_err("invalid");
        assert!(
            err.to_string().contains(&vc_err("Team_A").to_string()),
            "{err}"
        );
        let err = serde_json::from_str::<ProjectName>("\"\"").expect_err("empty");
        assert!(
            err.to_string().contains("project name must not be empty"),
            "{err}"
        );
        assert!(serde_json::from_str::<ProjectName>("42").is_err());
        assert!(serde_json::from_str::<ProjectName>("null").is_err());

        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        struct Spec {
            name: VClusterName,
            project: ProjectName,
        }
        let spec = Spec {
            name: VClusterName::new("x1").expect("valid"),
            project: ProjectName::default_project(),
        };
        let json = serde_json::to_string(&spec).expect("serializes");
        assert_eq!(json, r#"{"name":"x1","project":"default"}"#);
        assert_eq!(serde_json::from_str::<Spec>(&json).ok(), Some(spec));
        let err = serde_json::from_str::<Spec>(r#"{"name":"x1","project":"-p"}"#)
            .expect_err("bad project");
        assert!(
            err.to_string().contains("project name \"-p\" is invalid"),
            "{err}"
        );
    }

    #[test]
    fn label_keys_valid() {
        let name63 = "n".repeat(63);
        let prefix253 = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        assert_eq!(prefix253.len(), 253);
        let long_prefixed = format!("{prefix253}/{name63}");
        for key in [
            "app",
            "App",
            "a",
            "9",
            "app.kubernetes.io/name",
            "example.com/My_Key.v1-2",
            "a/b",
            "k8s.io/x",
            "under_score",
            "dots.in.name",
            "x-y",
            "A1",
            name63.as_str(),
            long_prefixed.as_str(),
        ] {
            assert_eq!(validate_label_key(key), Ok(()), "{key:?}");
        }
    }

    #[test]
    fn label_keys_invalid() {
        use NameKind::{LabelKey, LabelKeyName, LabelKeyPrefix};
        let cases: Vec<(String, NameError)> = vec![
            ("".into(), NameError::Empty { kind: LabelKey }),
            (
                "/app".into(),
                NameError::Empty {
                    kind: LabelKeyPrefix,
                },
            ),
            (
                "example.com/".into(),
                NameError::Empty { kind: LabelKeyName },
            ),
            (
                "n".repeat(64),
                NameError::TooLong {
                    kind: LabelKey,
                    value: "n".repeat(64),
                    max: 63,
                    got: 64,
                },
            ),
            (
                format!("p/{}", "n".repeat(64)),
                NameError::TooLong {
                    kind: LabelKeyName,
                    value: "n".repeat(64),
                    max: 63,
                    got: 64,
                },
            ),
            (
                format!("{}/n", "p".repeat(254)),
                NameError::TooLong {
                    kind: LabelKeyPrefix,
                    value: format!("{}…", "p".repeat(64)),
                    max: 253,
                    got: 254,
                },
            ),
            (
                "a b".into(),
                NameError::InvalidChar {
                    kind: LabelKey,
                    value: "a b".into(),
                    ch: ' ',
                    position: 1,
                },
            ),
            (
                "a/b/c".into(),
                NameError::InvalidChar {
                    kind: LabelKeyName,
                    value: "b/c".into(),
                    ch: '/',
                    position: 1,
                },
            ),
            (
                "ex_ample.com/a".into(),
                NameError::InvalidChar {
                    kind: LabelKeyPrefix,
                    value: "ex_ample.com".into(),
                    ch: '_',
                    position: 2,
                },
            ),
            (
                "Example.com/a".into(),
                NameError::Uppercase {
                    kind: LabelKeyPrefix,
                    value: "Example.com".into(),
                    suggestion: "example.com".into(),
                },
            ),
            (
                "-app".into(),
                NameError::BadEdge {
                    kind: LabelKey,
                    value: "-app".into(),
                },
            ),
            (
                "app.".into(),
                NameError::BadEdge {
                    kind: LabelKey,
                    value: "app.".into(),
                },
            ),
            (
                "x/_app".into(),
                NameError::BadEdge {
                    kind: LabelKeyName,
                    value: "_app".into(),
                },
            ),
            (
                ".example.com/a".into(),
                NameError::BadEdge {
                    kind: LabelKeyPrefix,
                    value: ".example.com".into(),
                },
            ),
            (
                "example..com/a".into(),
                NameError::BadSegment {
                    kind: LabelKeyPrefix,
                    value: "example..com".into(),
                    segment: "".into(),
                },
            ),
            (
                "example-.com/a".into(),
                NameError::BadSegment {
                    kind: LabelKeyPrefix,
                    value: "example-.com".into(),
                    segment: "example-".into(),
                },
            ),
            (
                "a.-b/c".into(),
                NameError::BadSegment {
                    kind: LabelKeyPrefix,
                    value: "a.-b".into(),
                    segment: "-b".into(),
                },
            ),
            (
                "ключ".into(),
                NameError::InvalidChar {
                    kind: LabelKey,
                    value: "ключ".into(),
                    ch: 'к',
                    position: 0,
                },
            ),
        ];
        for (key, expected) in cases {
            assert_eq!(validate_label_key(&key), Err(expected), "{key:?}");
        }
    }

    #[test]
    fn label_values() {
        let v63 = "v".repeat(63);
        for value in [
            "",
            "a",
            "Z",
            "1",
            "v1.2.3",
            "my_value",
            "a-b",
            "A.b_C-d",
            v63.as_str(),
        ] {
            assert_eq!(validate_label_value(value), Ok(()), "{value:?}");
        }
        use NameKind::LabelValue;
        let cases: Vec<(String, NameError)> = vec![
            (
                "v".repeat(64),
                NameError::TooLong {
                    kind: LabelValue,
                    value: "v".repeat(64),
                    max: 63,
                    got: 64,
                },
            ),
            (
                "a/b".into(),
                NameError::InvalidChar {
                    kind: LabelValue,
                    value: "a/b".into(),
                    ch: '/',
                    position: 1,
                },
            ),
            (
                "a b".into(),
                NameError::InvalidChar {
                    kind: LabelValue,
                    value: "a b".into(),
                    ch: ' ',
                    position: 1,
                },
            ),
            (
                "ä".into(),
                NameError::InvalidChar {
                    kind: LabelValue,
                    value: "ä".into(),
                    ch: 'ä',
                    position: 0,
                },
            ),
            (
                "-a".into(),
                NameError::BadEdge {
                    kind: LabelValue,
                    value: "-a".into(),
                },
            ),
            (
                "a_".into(),
                NameError::BadEdge {
                    kind: LabelValue,
                    value: "a_".into(),
                },
            ),
            (
                ".".into(),
                NameError::BadEdge {
                    kind: LabelValue,
                    value: ".".into(),
                },
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(validate_label_value(&value), Err(expected), "{value:?}");
        }
    }

    #[test]
    fn weird_inputs_never_panic() {
        let long = "a".repeat(100_000);
        let long_multibyte = "日".repeat(1_000);
        let inputs = [
            "\u{0}",
            "\u{feff}a",
            "a\u{301}",
            "🦀",
            "a🦀b",
            "/",
            "//",
            "a//b",
            ".",
            "..",
            "-",
            "\n",
            "a\r\n",
            long.as_str(),
            long_multibyte.as_str(),
        ];
        for s in inputs {
            assert!(VClusterName::new(s).is_err(), "{s:?}");
            assert!(ProjectName::new(s).is_err(), "{s:?}");
            assert!(validate_label_key(s).is_err(), "{s:?}");
            assert!(validate_label_value(s).is_err(), "{s:?}");
            // Formatting the error must not panic either.
            if let Err(e) = VClusterName::new(s) {
                assert!(!e.to_string().is_empty());
            }
        }
    }
}
