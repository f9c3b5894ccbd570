//! The rules every artifact key obeys, checked before any storage is touched.
//!
//! Keys are relative, `/`-separated object names such as
//! `snapshots/p/v/<id>/manifest.json`. On a local directory they become file paths, so a
//! key that could climb out of the root (`..`, an absolute path, a Windows separator) is
//! refused with [`ArtifactError::Refused`] instead of being handed to the backend. The
//! same rules hold for every backend, so a key accepted by the tests on `memory://` is
//! accepted on disk and, later, by object stores.

use crate::ArtifactError;

/// The longest key accepted, in bytes (the S3 object-key limit).
pub const MAX_KEY_BYTES: usize = 1024;

/// Checks an object key for [`put`](crate::ArtifactStore::put) and
/// [`get`](crate::ArtifactStore::get).
///
/// Refused: an empty key, one longer than [`MAX_KEY_BYTES`], an absolute key (leading
/// `/`), one that contains `..`, a backslash or a control character, an empty segment
/// (`a//b`, or a trailing `/`: keys name objects, not directories), and a segment that
/// starts with `.` (hidden names are reserved: the local store keeps its temporary files
/// in `.ovc-tmp/`).
pub fn check_key(key: &str) -> Result<(), ArtifactError> {
    if key.len() > 1 && key.ends_with('/') {
        return Err(refused(
            "key",
            key,
            "ends with '/' (keys name objects, not directories)",
        ));
    }
    check(key, "key")
}

/// Checks a prefix for [`delete_prefix`](crate::ArtifactStore::delete_prefix).
///
/// The rules of [`check_key`], except that one trailing `/` is allowed. Returns the prefix
/// as a directory, ending with `/`, so that deleting `snapshots/p/v/a` never touches
/// `snapshots/p/v/ab`.
pub fn check_prefix(prefix: &str) -> Result<String, ArtifactError> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    check(trimmed, "prefix")?;
    Ok(format!("{trimmed}/"))
}

fn check(key: &str, what: &str) -> Result<(), ArtifactError> {
    if key.is_empty() {
        return Err(ArtifactError::Refused(format!(
            "the artifact {what} is empty"
        )));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ArtifactError::Refused(format!(
            "the artifact {what} is {} bytes long, more than {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if key.starts_with('/') {
        return Err(refused(what, key, "is absolute (starts with '/')"));
    }
    if key.contains("..") {
        return Err(refused(what, key, "contains '..'"));
    }
    if key.contains('\\') {
        return Err(refused(what, key, "contains a backslash"));
    }
    if key.chars().any(char::is_control) {
        return Err(refused(what, key, "contains a control character"));
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return Err(refused(what, key, "has an empty segment ('//')"));
        }
        if segment.starts_with('.') {
            return Err(refused(what, key, "has a segment starting with '.'"));
        }
    }
    Ok(())
}

fn refused(what: &str, key: &str, why: &str) -> ArtifactError {
    ArtifactError::Refused(format!("artifact {what} {key:?} {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_pass() {
        for key in [
            "a",
            "snapshots/p/v/0190a8f2-7c1e-7000-8000-000000000001/manifest.json",
            "restore-safety/p/v/op/backing-store.bin",
            "a b/c~d_e-f.g",
            "ünïcode/ключ",
        ] {
            assert_eq!(check_key(key), Ok(()), "{key}");
        }
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        for (key, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("a/b..c", "'..'"),
            ("a\\b", "backslash"),
            ("a\\..\\b", "'..'"),
            ("a//b", "empty segment"),
            ("a/", "ends with '/'"),
            ("./a", "starting with '.'"),
            ("a/.ovc-tmp/x", "starting with '.'"),
            ("a\0b", "control"),
            ("a\nb", "control"),
        ] {
            match check_key(key) {
                Err(ArtifactError::Refused(m)) => assert!(m.contains(why), "{key:?}: {m}"),
                other => panic!("{key:?}: {other:?}"),
            }
        }
        let long = "a".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(check_key(&long), Err(ArtifactError::Refused(_))));
        assert_eq!(check_key(&"a".repeat(MAX_KEY_BYTES)), Ok(()));
    }

    #[test]
    fn prefixes_become_directories() {
        assert_eq!(check_prefix("snapshots/p").as_deref(), Ok("snapshots/p/"));
        assert_eq!(check_prefix("snapshots/p/").as_deref(), Ok("snapshots/p/"));
        for bad in ["", "/", "//", "a//", "/a/", "../a/", "a/.."] {
            assert!(
                matches!(check_prefix(bad), Err(ArtifactError::Refused(_))),
                "{bad:?}"
            );
        }
    }
}
