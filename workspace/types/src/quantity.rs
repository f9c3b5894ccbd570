//! Kubernetes resource quantities (`"500m"`, `"8Gi"`, `"1e3"`), validated and compared by value.
//!
//! Resource requests and limits in a vcluster spec are written in the syntax of
//! `k8s.io/apimachinery` `resource.Quantity`. We keep the text the user wrote (that is what we
//! store and echo back) and, alongside it, the exact value in thousandths computed with integer
//! arithmetic, so quantities can be compared, summed against quotas and checked for sanity
//! without floating point surprises. Negative quantities are rejected: resources are never
//! negative.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest input echoed back verbatim in an error message; longer inputs are shortened.
const ECHO_MAX_CHARS: usize = 64;

/// Exponents beyond this magnitude all behave the same (the value is either far too large or
/// rounds up to one thousandth), so parsing saturates here instead of overflowing.
const EXPONENT_CAP: i64 = 1_000_000_000_000;

/// Why a string is not an acceptable resource quantity.
///
/// `text` fields hold the offending input, shortened to 64 characters (plus `…`) when longer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The input was empty.
    #[error("quantity must not be empty")]
    Empty,
    /// The input contained whitespace.
    #[error("{text:?} is not a Kubernetes quantity: whitespace is not allowed")]
    Whitespace {
        /// The offending input (possibly shortened).
        text: String,
    },
    /// The input did not start with a number (after an optional sign).
    #[error(
        "{text:?} is not a Kubernetes quantity: expected a number like 4, 0.5 or 1.5, \
         optionally followed by a suffix like m, Gi or e3"
    )]
    MissingNumber {
        /// The offending input (possibly shortened).
        text: String,
    },
    /// The number contained more than one decimal point.
    #[error("{text:?} is not a Kubernetes quantity: the number has more than one '.'")]
    MultipleDecimalPoints {
        /// The offending input (possibly shortened).
        text: String,
    },
    /// The text after the number is not a known suffix or exponent.
    #[error(
        "{text:?} is not a Kubernetes quantity: unknown suffix {suffix:?} (expected one of n, u, \
         m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent like e3)"
    )]
    UnknownSuffix {
        /// The offending input (possibly shortened).
        text: String,
        /// The unrecognised suffix (possibly shortened).
        suffix: String,
    },
    /// The quantity is well formed but negative.
    #[error("quantity {text:?} is negative; resource quantities must be >= 0")]
    Negative {
        /// The offending input (possibly shortened).
        text: String,
    },
    /// The quantity exceeds [`Quantity::MAX_MILLIS`].
    #[error("quantity {text:?} is too large")]
    TooLarge {
        /// The offending input (possibly shortened).
        text: String,
    },
}

/// A non-negative Kubernetes resource quantity: the original text plus its exact value.
///
/// Equality, ordering and hashing use the numeric value only, so `"1Gi" == "1073741824"` and
/// `"1000m" == "1"`; [`Quantity::as_str`] still returns the text as written.
#[derive(Debug, Clone)]
pub struct Quantity {
    /// The text as written by the user.
    text: String,
    /// The value × 1000, rounded up.
    millis: u128,
}

impl Quantity {
    /// Largest accepted value in thousandths (10^30, i.e. 10^27 whole units).
    pub const MAX_MILLIS: u128 = 1_000_000_000_000_000_000_000_000_000_000;

    /// Parses a quantity such as `"4"`, `"500m"`, `"1.5Gi"` or `"1e3"`.
    ///
    /// Values finer than a thousandth are rounded up, as Kubernetes does (`"0.1m"` is 1 milli).
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let millis = parse_millis(s)?;
        Ok(Quantity {
            text: s.to_owned(),
            millis,
        })
    }

    /// The quantity exactly as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value in thousandths of a unit, rounded up (`"500m"` is 500, `"2"` is 2000).
    pub fn millis(&self) -> u128 {
        self.millis
    }

    /// The value in whole units, rounded up (`"500m"` is 1, `"1Ki"` is 1024).
    pub fn value_ceil(&self) -> u128 {
        self.millis.div_ceil(1000)
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.millis == other.millis
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.millis.cmp(&other.millis)
    }
}

impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.millis.hash(state);
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }
}

/// Accepts a quantity string or a non-negative integer.
struct QuantityVisitor;

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a Kubernetes quantity string (like \"500m\", \"0.5\" or \"8Gi\") or a non-negative \
             integer",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        Quantity::parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Quantity, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        self.visit_i128(i128::from(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Quantity, E> {
        if v < 0 {
            return Err(E::custom(QuantityError::Negative {
                text: v.to_string(),
            }));
        }
        self.visit_str(&v.to_string())
    }
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

/// How the suffix scales the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    /// Multiply by 1024^n (`Ki` is 1 … `Ei` is 6).
    Binary(u32),
    /// Multiply by 10^n (SI suffixes and `e<n>` exponents).
    Decimal(i64),
}

/// Splits `s` after its leading ASCII digits.
fn split_digits(s: &str) -> (&str, &str) {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    // `n` counts leading ASCII bytes, so it is always a char boundary; never panics either way.
    s.split_at_checked(n).unwrap_or((s, ""))
}

/// Parses a suffix, or returns `None` if it is not one.
fn parse_suffix(suffix: &str) -> Option<Scale> {
    let scale = match suffix {
        "Ki" => Scale::Binary(1),
        "Mi" => Scale::Binary(2),
        "Gi" => Scale::Binary(3),
        "Ti" => Scale::Binary(4),
        "Pi" => Scale::Binary(5),
        "Ei" => Scale::Binary(6),
        "n" => Scale::Decimal(-9),
        "u" => Scale::Decimal(-6),
        "m" => Scale::Decimal(-3),
        "" => Scale::Decimal(0),
        "k" => Scale::Decimal(3),
        "M" => Scale::Decimal(6),
        "G" => Scale::Decimal(9),
        "T" => Scale::Decimal(12),
        "P" => Scale::Decimal(15),
        "E" => Scale::Decimal(18),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let (negative, digits) = match exp.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, exp.strip_prefix('+').unwrap_or(exp)),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let magnitude = digits.bytes().fold(0i64, |acc, b| {
                (acc * 10 + i64::from(b - b'0')).min(EXPONENT_CAP)
            });
            Scale::Decimal(if negative { -magnitude } else { magnitude })
        }
    };
    Some(scale)
}

/// Validates `text` and computes its value in thousandths, rounded up.
fn parse_millis(text: &str) -> Result<u128, QuantityError> {
    if text.is_empty() {
        return Err(QuantityError::Empty);
    }
    if text.chars().any(char::is_whitespace) {
        return Err(QuantityError::Whitespace { text: echo(text) });
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int_digits, rest) = split_digits(unsigned);
    let (frac_digits, rest) = match rest.strip_prefix('.') {
        Some(after_point) => split_digits(after_point),
        None => ("", rest),
    };
    if rest.starts_with('.') {
        return Err(QuantityError::MultipleDecimalPoints { text: echo(text) });
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(QuantityError::MissingNumber { text: echo(text) });
    }
    let scale = parse_suffix(rest).ok_or_else(|| QuantityError::UnknownSuffix {
        text: echo(text),
        suffix: echo(rest),
    })?;
    if negative {
        return Err(QuantityError::Negative { text: echo(text) });
    }
    exact_millis(int_digits, frac_digits, scale)
        .ok_or_else(|| QuantityError::TooLarge { text: echo(text) })
}

/// Computes `ceil(<int_digits>.<frac_digits> × scale × 1000)` exactly, or `None` if it exceeds
/// [`Quantity::MAX_MILLIS`]. Both digit strings must be ASCII digits only.
fn exact_millis(int_digits: &str, frac_digits: &str, scale: Scale) -> Option<u128> {
    // Significant digits of the number read as an integer, most significant first.
    let significand: Vec<u8> = int_digits
        .bytes()
        .chain(frac_digits.bytes())
        .skip_while(|&b| b == b'0')
        .map(|b| b - b'0')
        .collect();
    if significand.is_empty() {
        return Some(0);
    }
    let (multiplier, exp10) = match scale {
        Scale::Binary(n) => (1u64.checked_shl(10 * n)?, 0),
        Scale::Decimal(e) => (1, e),
    };
    // value × 1000 = product × 10^shift, where product = significand × multiplier.
    let product = mul_digits(&significand, multiplier);
    let frac_len = i128::try_from(frac_digits.len()).ok()?;
    let shift = 3 + i128::from(exp10) - frac_len;
    // Number of digits of the integer part of the result. 10^31 > MAX_MILLIS, so anything with
    // more than 31 integer digits is too large; this also bounds the work for huge exponents.
    let int_len = i128::try_from(product.len()).ok()? + shift;
    if int_len > 31 {
        return None;
    }
    let millis = if shift >= 0 {
        let mut value = digits_to_u128(&product)?;
        for _ in 0..shift {
            value = value.checked_mul(10)?;
        }
        value
    } else {
        let int_len = usize::try_from(int_len.max(0)).ok()?;
        let (int_part, frac_part) = product.split_at_checked(int_len)?;
        let round_up = frac_part.iter().any(|&d| d != 0);
        digits_to_u128(int_part)?.checked_add(u128::from(round_up))?
    };
    (millis <= Quantity::MAX_MILLIS).then_some(millis)
}

/// Multiplies a big-endian decimal digit string by `m`, returning big-endian decimal digits.
fn mul_digits(digits: &[u8], m: u64) -> Vec<u8> {
    if m == 1 {
        return digits.to_vec();
    }
    let m = u128::from(m);
    let mut out = Vec::with_capacity(digits.len() + 20);
    let mut carry: u128 = 0;
    for &d in digits.iter().rev() {
        let cur = u128::from(d) * m + carry;
        out.push((cur % 10) as u8);
        carry = cur / 10;
    }
    while carry > 0 {
        out.push((carry % 10) as u8);
        carry /= 10;
    }
    out.reverse();
    out
}

/// Reads big-endian decimal digits as a `u128`, or `None` on overflow.
fn digits_to_u128(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u128::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KI: u128 = 1024;
    const MI: u128 = KI * 1024;
    const GI: u128 = MI * 1024;
    const TI: u128 = GI * 1024;
    const PI: u128 = TI * 1024;
    const EI: u128 = PI * 1024;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn err(s: &str) -> QuantityError {
        match Quantity::parse(s) {
            Ok(v) => panic!("{s:?} should be rejected, got {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_valid_quantities() {
        let cases: &[(&str, u128)] = &[
            ("0", 0),
            ("4", 4_000),
            ("+4", 4_000),
            ("007", 7_000),
            ("500m", 500),
            ("1000m", 1_000),
            ("0.5", 500),
            (".5", 500),
            ("5.", 5_000),
            ("1.G", 1_000_000_000_000),
            ("2.50", 2_500),
            ("0.001", 1),
            ("0.0001", 1),
            ("0.0011", 2),
            ("1.0001", 1_001),
            ("100k", 100_000_000),
            ("1M", 1_000_000_000),
            ("1G", 1_000_000_000_000),
            ("20G", 20_000_000_000_000),
            ("1T", 10u128.pow(15)),
            ("1P", 10u128.pow(18)),
            ("1E", 10u128.pow(21)),
            ("1n", 1),
            ("0n", 0),
            ("1000000n", 1),
            ("1000001n", 2),
            ("1u", 1),
            ("1000u", 1),
            ("1500u", 2),
            ("0.1m", 1),
            ("0.9m", 1),
            ("1.1m", 2),
            ("250m", 250),
            ("1Ki", KI * 1000),
            ("1Mi", MI * 1000),
            ("8Gi", 8 * GI * 1000),
            ("20Gi", 20 * GI * 1000),
            ("1.5Gi", 3 * GI * 1000 / 2),
            ("0.5Ki", 512_000),
            ("1Ti", TI * 1000),
            ("1Pi", PI * 1000),
            ("1Ei", EI * 1000),
            ("0.001Ki", 1_024),
            ("0.0001Ki", 103), // 102.4 rounded up
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("1e+3", 1_000_000),
            ("1e0", 1_000),
            ("12E-1", 1_200),
            ("1e-3", 1),
            ("1e-4", 1),
            ("15e-4", 2),
            ("2.5e2", 250_000),
            ("1e003", 1_000_000),
            ("0e999999", 0),
            ("0.000e99999999999999999999999", 0),
            ("1e-999999", 1),
            ("1e-99999999999999999999999999", 1),
            ("1073741824", GI * 1000),
            ("1000000000000000000000000000", Quantity::MAX_MILLIS),
            ("1e27", Quantity::MAX_MILLIS),
        ];
        for &(s, millis) in cases {
            let parsed = q(s);
            assert_eq!(parsed.millis(), millis, "{s:?}");
            assert_eq!(parsed.as_str(), s);
            assert_eq!(parsed.to_string(), s);
            assert_eq!(
                s.parse::<Quantity>().map(|v| v.millis()),
                Ok(millis),
                "{s:?}"
            );
        }
    }

    #[test]
    fn value_ceil_rounds_up_to_whole_units() {
        assert_eq!(q("0").value_ceil(), 0);
        assert_eq!(q("1m").value_ceil(), 1);
        assert_eq!(q("500m").value_ceil(), 1);
        assert_eq!(q("1000m").value_ceil(), 1);
        assert_eq!(q("1001m").value_ceil(), 2);
        assert_eq!(q("110").value_ceil(), 110);
        assert_eq!(q("1Ki").value_ceil(), 1024);
        assert_eq!(q("8Gi").value_ceil(), 8 * GI);
        assert_eq!(q("1n").value_ceil(), 1);
    }

    #[test]
    fn rejects_invalid_quantities() {
        use QuantityError as E;
        let missing = |s: &str| E::MissingNumber { text: s.into() };
        let suffix = |s: &str, suf: &str| E::UnknownSuffix {
            text: s.into(),
            suffix: suf.into(),
        };
        let cases: Vec<(&str, QuantityError)> = vec![
            ("", E::Empty),
            ("abc", missing("abc")),
            (".", missing(".")),
            ("+", missing("+")),
            ("-", missing("-")),
            ("+.", missing("+.")),
            ("Gi", missing("Gi")),
            ("m", missing("m")),
            ("e3", missing("e3")),
            ("+-1", missing("+-1")),
            ("--1", missing("--1")),
            (
                "1..2",
                E::MultipleDecimalPoints {
                    text: "1..2".into(),
                },
            ),
            (
                "1.2.3",
                E::MultipleDecimalPoints {
                    text: "1.2.3".into(),
                },
            ),
            ("..5", E::MultipleDecimalPoints { text: "..5".into() }),
            (
                "5 Gi",
                E::Whitespace {
                    text: "5 Gi".into(),
                },
            ),
            (" 5", E::Whitespace { text: " 5".into() }),
            ("5\n", E::Whitespace { text: "5\n".into() }),
            (
                "5\u{a0}Gi",
                E::Whitespace {
                    text: "5\u{a0}Gi".into(),
                },
            ),
            ("5GB", suffix("5GB", "GB")),
            ("1Gib", suffix("1Gib", "Gib")),
            ("1e", suffix("1e", "e")),
            ("1E+", suffix("1E+", "E+")),
            ("1e-", suffix("1e-", "e-")),
            ("1ee3", suffix("1ee3", "ee3")),
            ("1e3.5", suffix("1e3.5", "e3.5")),
            ("1e3m", suffix("1e3m", "e3m")),
            ("1K", suffix("1K", "K")),
            ("1gi", suffix("1gi", "gi")),
            ("1mi", suffix("1mi", "mi")),
            ("1Kii", suffix("1Kii", "Kii")),
            ("1i", suffix("1i", "i")),
            ("1+", suffix("1+", "+")),
            ("1-", suffix("1-", "-")),
            ("5Ği", suffix("5Ği", "Ği")),
            ("1e+-3", suffix("1e+-3", "e+-3")),
            ("-1", E::Negative { text: "-1".into() }),
            ("-0", E::Negative { text: "-0".into() }),
            (
                "-500m",
                E::Negative {
                    text: "-500m".into(),
                },
            ),
            (
                "-1e40",
                E::Negative {
                    text: "-1e40".into(),
                },
            ),
            ("-1GB", suffix("-1GB", "GB")),
            (
                "1e40",
                E::TooLarge {
                    text: "1e40".into(),
                },
            ),
            (
                "1e28",
                E::TooLarge {
                    text: "1e28".into(),
                },
            ),
            (
                "1000000000000000000000000001",
                E::TooLarge {
                    text: "1000000000000000000000000001".into(),
                },
            ),
            (
                "1000000000000000000000000000.001",
                E::TooLarge {
                    text: "1000000000000000000000000000.001".into(),
                },
            ),
            (
                "1e999999",
                E::TooLarge {
                    text: "1e999999".into(),
                },
            ),
            (
                "1e99999999999999999999999999",
                E::TooLarge {
                    text: "1e99999999999999999999999999".into(),
                },
            ),
            (
                "1000000000Ei",
                E::TooLarge {
                    text: "1000000000Ei".into(),
                },
            ),
            (
                "1000000000001E",
                E::TooLarge {
                    text: "1000000000001E".into(),
                },
            ),
        ];
        for (s, expected) in cases {
            assert_eq!(
                Quantity::parse(s).map(|v| v.millis()),
                Err(expected),
                "{s:?}"
            );
        }
    }

    #[test]
    fn error_messages_are_human_readable() {
        assert_eq!(
            err("5GB").to_string(),
            "\"5GB\" is not a Kubernetes quantity: unknown suffix \"GB\" (expected one of n, u, \
             m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent like e3)"
        );
        assert_eq!(err("").to_string(), "quantity must not be empty");
        assert_eq!(
            err("-1").to_string(),
            "quantity \"-1\" is negative; resource quantities must be >= 0"
        );
        assert_eq!(err("1e40").to_string(), "quantity \"1e40\" is too large");
        assert_eq!(
            err("5 Gi").to_string(),
            "\"5 Gi\" is not a Kubernetes quantity: whitespace is not allowed"
        );
        assert_eq!(
            err("1..2").to_string(),
            "\"1..2\" is not a Kubernetes quantity: the number has more than one '.'"
        );
        assert!(
            err("abc")
                .to_string()
                .starts_with("\"abc\" is not a Kubernetes quantity")
        );
    }

    #[test]
    fn long_inputs_are_shortened_in_errors() {
        let long = "9".repeat(100_000);
        let e = err(&long);
        assert_eq!(
            e,
            QuantityError::TooLarge {
                text: format!("{}…", "9".repeat(64))
            }
        );
        assert!(e.to_string().len() < 120, "{e}");
        let long_suffix = format!("1{}", "x".repeat(1_000));
        let QuantityError::UnknownSuffix { suffix, .. } = err(&long_suffix) else {
            panic!("expected UnknownSuffix");
        };
        assert_eq!(suffix, format!("{}…", "x".repeat(64)));
    }

    #[test]
    fn long_digit_strings_are_exact() {
        // Many significant fractional digits: exact value is just above 1, so rounds up.
        let s = format!("1.{}1", "0".repeat(5_000));
        assert_eq!(q(&s).millis(), 1_001);
        // Trailing zeros do not cause rounding.
        let s = format!("1.{}", "0".repeat(5_000));
        assert_eq!(q(&s).millis(), 1_000);
        // Tiny but non-zero: one milli.
        let s = format!("0.{}1", "0".repeat(5_000));
        assert_eq!(q(&s).millis(), 1);
        let s = format!("0.{}", "0".repeat(5_000));
        assert_eq!(q(&s).millis(), 0);
        // Leading zeros do not count towards size.
        let s = format!("{}42", "0".repeat(5_000));
        assert_eq!(q(&s).millis(), 42_000);
        // Huge integers are too large, with or without a negative exponent bringing them back.
        let s = "1".repeat(40);
        assert!(matches!(err(&s), QuantityError::TooLarge { .. }));
        let s = format!("{}e-20", "1".repeat(40));
        // 1.1…1e19 × 1000 = 22 ones and a fraction, rounded up.
        let expected: u128 = format!("{}2", "1".repeat(22)).parse().expect("fits");
        assert_eq!(q(&s).millis(), expected);
        // Binary suffix with many fractional digits.
        let s = format!("1.{}1Ki", "0".repeat(100));
        assert_eq!(q(&s).millis(), 1_024_001);
    }

    #[test]
    fn equality_ordering_and_hash_use_the_value() {
        use std::collections::HashSet;
        let equal_groups: &[&[&str]] = &[
            &[
                "1Gi",
                "1073741824",
                "1024Mi",
                "1048576Ki",
                "1.073741824G",
                "1073741824000m",
            ],
            &[
                "1000m", "1", "1.0", "+1", "1e0", "0.001k", "1000000u", "10E-1",
            ],
            &["0", "0m", "0Gi", "0.0", "0e5"],
            &["1n", "0.1m", "1m", "0.001"],
            &["1500m", "1.5", "15e-1"],
        ];
        for group in equal_groups {
            for a in *group {
                for b in *group {
                    assert_eq!(q(a), q(b), "{a:?} vs {b:?}");
                }
            }
            let set: HashSet<Quantity> = group.iter().map(|s| q(s)).collect();
            assert_eq!(set.len(), 1, "{group:?}");
        }
        assert_ne!(q("1G"), q("1Gi"));
        assert!(q("1G") < q("1Gi"));
        assert!(q("999m") < q("1"));
        assert!(q("1Ki") > q("1k"));
        assert!(q("1e3") > q("999"));
        let mut sorted = [q("2"), q("1Gi"), q("500m"), q("1G"), q("0")];
        sorted.sort();
        let texts: Vec<&str> = sorted.iter().map(Quantity::as_str).collect();
        assert_eq!(texts, ["0", "500m", "2", "1G", "1Gi"]);
    }

    #[test]
    fn serde_roundtrip() {
        for s in ["4", "500m", "8Gi", "1.5Gi", "1e3", "+1"] {
            let parsed = q(s);
            let json = serde_json::to_string(&parsed).expect("serializes");
            assert_eq!(json, format!("\"{s}\""));
            let back: Quantity = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back.as_str(), s);
            assert_eq!(back.millis(), parsed.millis());
        }
    }

    #[test]
    fn serde_accepts_non_negative_integers() {
        let four: Quantity = serde_json::from_str("4").expect("integer");
        assert_eq!(four.as_str(), "4");
        assert_eq!(four.millis(), 4_000);
        let zero: Quantity = serde_json::from_str("0").expect("zero");
        assert_eq!(zero.millis(), 0);
        let big: Quantity = serde_json::from_str("18446744073709551615").expect("u64::MAX");
        assert_eq!(big.as_str(), "18446744073709551615");
        assert_eq!(big.millis(), u128::from(u64::MAX) * 1000);
        // Re-serialised as a string.
        assert_eq!(serde_json::to_string(&four).ok().as_deref(), Some("\"4\""));

        let mut map: std::collections::BTreeMap<String, Quantity> =
            serde_json::from_str(r#"{"cpu": 4, "memory": "8Gi"}"#).expect("map");
        assert_eq!(map.remove("cpu").map(|v| v.millis()), Some(4_000));
        assert_eq!(
            map.remove("memory").map(|v| v.millis()),
            Some(8 * GI * 1000)
        );
    }

    #[test]
    fn serde_rejects_invalid_input_with_quantity_messages() {
        let e = serde_json::from_str::<Quantity>("\"5GB\"").expect_err("bad suffix");
        assert!(e.to_string().contains(&err("5GB").to_string()), "{e}");
        let e = serde_json::from_str::<Quantity>("-1").expect_err("negative integer");
        assert!(e.to_string().contains("quantity \"-1\" is negative"), "{e}");
        let e = serde_json::from_str::<Quantity>("\"-1\"").expect_err("negative string");
        assert!(e.to_string().contains("quantity \"-1\" is negative"), "{e}");
        let e = serde_json::from_str::<Quantity>("\"\"").expect_err("empty");
        assert!(e.to_string().contains("quantity must not be empty"), "{e}");
        for bad in ["0.5", "1e3", "true", "null", "[]", "{}", "[\"1\"]"] {
            let e = serde_json::from_str::<Quantity>(bad).expect_err(bad);
            assert!(e.to_string().contains("Kubernetes quantity"), "{bad}: {e}");
        }
    }

    #[test]
    fn weird_inputs_never_panic() {
        let long_digits = "7".repeat(200_000);
        let long_frac = format!("0.{}", "3".repeat(200_000));
        let long_exp = format!("1e{}", "9".repeat(10_000));
        let long_neg_exp = format!("1e-{}", "9".repeat(10_000));
        let many_points = ".".repeat(10_000);
        let inputs: Vec<&str> = vec![
            "5Ği",
            "١٢",
            "٣m",
            "５",
            "🦀",
            "1🦀",
            "1.🦀",
            "1e🦀",
            "1é3",
            "\u{0}",
            "1\u{0}",
            "+\u{301}",
            "-🦀",
            "1\u{feff}",
            "ℯ3",
            "1ℯ3",
            "NaN",
            "inf",
            "0x10",
            "1_000",
            "1,5",
            &long_digits,
            &long_frac,
            &long_exp,
            &long_neg_exp,
            &many_points,
        ];
        for s in inputs {
            // Must return without panicking; formatting the error must not panic either.
            match Quantity::parse(s) {
                Ok(v) => assert!(v.millis() <= Quantity::MAX_MILLIS, "{s:?}"),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
        // And the specific outcomes:
        assert!(matches!(err("١٢"), QuantityError::MissingNumber { .. }));
        assert!(matches!(err("５"), QuantityError::MissingNumber { .. }));
        assert!(matches!(err("1é3"), QuantityError::UnknownSuffix { .. }));
        assert!(matches!(err(&long_digits), QuantityError::TooLarge { .. }));
        assert_eq!(q(&long_frac).millis(), 334);
        assert!(matches!(err(&long_exp), QuantityError::TooLarge { .. }));
        assert_eq!(q(&long_neg_exp).millis(), 1);
        assert!(matches!(
            err(&many_points),
            QuantityError::MultipleDecimalPoints { .. }
        ));
        assert!(matches!(
            err(".."),
            QuantityError::MultipleDecimalPoints { .. }
        ));
    }
}
