//! Page tokens of the list calls: the keyset key of a page's last item, as text.
//!
//! A token comes back from clients, so it is user input: it is parsed strictly, one
//! format per list, and only the exact text this module prints is accepted
//! (`parse(print(k)) == k` and `print(parse(s)) == s`), so both backends accept and
//! refuse the same tokens. The keys are immutable columns of the rows, which is what
//! keeps paging stable while other commits land.

use crate::{Error, Result};
use chrono::{DateTime, Utc};
use ovc_types::{ProjectName, VClusterName};
use uuid::Uuid;

/// The key of operations and snapshots: creation time (microseconds) and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeKey {
    /// `created_at` in microseconds since the epoch.
    pub at_micros: i64,
    /// The row's id.
    pub id: Uuid,
}

/// The key of vclusters: project, name and uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VClusterKey {
    /// The project.
    pub project: ProjectName,
    /// The vcluster's name.
    pub name: VClusterName,
    /// The vcluster's uid.
    pub uid: Uuid,
}

fn bad(token: &str) -> Error {
    let shown: String = token.chars().take(80).collect();
    Error::InvalidInput(format!(
        "page token {shown:?} is not one this server issued"
    ))
}

impl TimeKey {
    /// The key of a row created at `at` with this id.
    pub fn new(at: DateTime<Utc>, id: Uuid) -> Self {
        TimeKey {
            at_micros: at.timestamp_micros(),
            id,
        }
    }

    /// `created_at` as a time.
    pub fn at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.at_micros).unwrap_or_default()
    }

    /// The token text.
    pub fn print(&self) -> String {
        format!("{}|{}", self.at_micros, self.id.as_hyphenated())
    }

    /// Parses a token printed by [`TimeKey::print`]; anything else is `InvalidInput`.
    pub fn parse(token: &str) -> Result<Self> {
        let (at, id) = token.split_once('|').ok_or_else(|| bad(token))?;
        let at_micros: i64 = at.parse().map_err(|_| bad(token))?;
        DateTime::from_timestamp_micros(at_micros).ok_or_else(|| bad(token))?;
        let id = Uuid::try_parse(id).map_err(|_| bad(token))?;
        let key = TimeKey { at_micros, id };
        canonical(token, key.print()).map(|()| key)
    }
}

impl VClusterKey {
    /// The token text.
    pub fn print(&self) -> String {
        format!(
            "{}|{}|{}",
            self.project.as_str(),
            self.name.as_str(),
            self.uid.as_hyphenated()
        )
    }

    /// Parses a token printed by [`VClusterKey::print`]; anything else is `InvalidInput`.
    pub fn parse(token: &str) -> Result<Self> {
        let mut parts = token.splitn(3, '|');
        let (Some(project), Some(name), Some(uid)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(token));
        };
        let key = VClusterKey {
            project: project.parse().map_err(|_| bad(token))?,
            name: name.parse().map_err(|_| bad(token))?,
            uid: Uuid::try_parse(uid).map_err(|_| bad(token))?,
        };
        canonical(token, key.print()).map(|()| key)
    }
}

/// Only the exact printed form is a token (no `+1`, `007`, upper-case or braced uuids).
fn canonical(token: &str, printed: String) -> Result<()> {
    if printed == token {
        Ok(())
    } else {
        Err(bad(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_only_the_printed_form_parses() {
        let id = Uuid::now_v7();
        let k = TimeKey::new(Utc::now(), id);
        assert_eq!(TimeKey::parse(&k.print()).unwrap(), k);
        let upper = format!("{}|{}", k.at_micros, id.to_string().to_uppercase());
        assert!(TimeKey::parse(&upper).is_err());
        assert!(TimeKey::parse(&format!("+{}", k.print())).is_err());
        assert!(TimeKey::parse("1|2").is_err());
        assert!(TimeKey::parse(&format!("{}|{id}", i64::MAX)).is_err());
        let v = VClusterKey {
            project: "default".parse().unwrap(),
            name: "team-a".parse().unwrap(),
            uid: id,
        };
        assert_eq!(VClusterKey::parse(&v.print()).unwrap(), v);
        assert!(VClusterKey::parse(&format!("Default|team-a|{id}")).is_err());
        assert!(VClusterKey::parse("a|b").is_err());
    }
}
