//! The one duration syntax of the command line: a positive whole number and a unit
//! (`500ms`, `90s`, `10m`, `1h`, `30d`, `4w`), for `--ready-timeout`,
//! `--inventory-every`, `--expires-in` and `--since`.

use std::time::Duration;

/// Parses `s`; the error says what is expected.
pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: use a positive duration such as 500ms, 90s, 10m, 1h, 30d or 4w");
    let at = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(at);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let seconds = |per: u64| n.checked_mul(per).map(Duration::from_secs).ok_or_else(bad);
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => seconds(1)?,
        "m" => seconds(60)?,
        "h" => seconds(3600)?,
        "d" => seconds(86_400)?,
        "w" => seconds(7 * 86_400)?,
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(bad());
    }
    Ok(d)
}

/// [`parse`], as a chrono duration (for arithmetic on timestamps).
pub fn parse_chrono(s: &str) -> Result<chrono::Duration, String> {
    let d = parse(s)?;
    chrono::Duration::from_std(d).map_err(|_| format!("{s:?}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses_and_the_rest_is_refused() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("600s"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse("4w"), Ok(Duration::from_secs(28 * 86_400)));
        assert_eq!(parse_chrono("90s"), Ok(chrono::Duration::seconds(90)));
        for bad in [
            "",
            "10",
            "0s",
            "-1s",
            "1y",
            "1.5m",
            "m",
            "10 m",
            "99999999999999999999w",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse("18446744073709551615w").is_err(),
            "overflow is refused"
        );
    }
}
