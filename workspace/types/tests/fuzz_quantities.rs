//! Property tests of the quantity parser: any input gives a value or an error, never a
//! panic; accepted quantities round-trip (text and JSON); the value is the exact one
//! (checked against integer arithmetic here), so comparison is by value and agrees with
//! equality and hashing. Cases: `PROPTEST_CASES` (256).

use ovc_types::quantity::Quantity;
use proptest::prelude::*;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// (suffix, numerator, denominator) of the scale: value = n × num / den.
const SUFFIXES: &[(&str, u128, u128)] = &[
    ("", 1, 1),
    ("n", 1, 1_000_000_000),
    ("u", 1, 1_000_000),
    ("m", 1, 1_000),
    ("k", 1_000, 1),
    ("M", 1_000_000, 1),
    ("G", 1_000_000_000, 1),
    ("T", 1_000_000_000_000, 1),
    ("Ki", 1 << 10, 1),
    ("Mi", 1 << 20, 1),
    ("Gi", 1 << 30, 1),
    ("Ti", 1 << 40, 1),
    ("e3", 1_000, 1),
    ("e-2", 1, 100),
];

fn hash(q: &Quantity) -> u64 {
    let mut h = DefaultHasher::new();
    q.hash(&mut h);
    h.finish()
}

/// An integer with a suffix, and its exact value in thousandths (rounded up).
fn scaled() -> impl Strategy<Value = (String, u128)> {
    (0u64..10_000_000, 0..SUFFIXES.len()).prop_map(|(n, i)| {
        let (suffix, num, den) = SUFFIXES[i];
        let millis = (u128::from(n) * num * 1000).div_ceil(den);
        (format!("{n}{suffix}"), millis)
    })
}

/// Quantity-looking text and anything.
fn quantity_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[+-]?[0-9]{0,8}(\\.[0-9]{0,6})?(n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[+-]?[0-9]{1,4}|[a-zA-Z]{1,3})?",
        "[0-9.eE+-]{0,30}",
        "[0-9]{1,40}(e[0-9]{1,20})?",
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn parse_never_panics_and_accepted_text_round_trips(s in quantity_like()) {
        match Quantity::parse(&s) {
            Ok(q) => {
                prop_assert_eq!(q.as_str(), s.as_str());
                prop_assert!(q.millis() <= Quantity::MAX_MILLIS);
                let again = Quantity::parse(&q.to_string()).unwrap();
                prop_assert_eq!(again.millis(), q.millis());
                let json = serde_json::to_string(&q).unwrap();
                let back: Quantity = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(back.as_str(), s.as_str());
                prop_assert!(!s.starts_with('-'), "negative accepted: {s:?}");
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn the_value_is_exact((text, millis) in scaled()) {
        let q = Quantity::parse(&text).unwrap();
        prop_assert_eq!(q.millis(), millis, "{}", text);
    }

    #[test]
    fn comparison_is_by_value_and_agrees_with_eq_and_hash(
        (a, ma) in scaled(),
        (b, mb) in scaled(),
    ) {
        let (qa, qb) = (Quantity::parse(&a).unwrap(), Quantity::parse(&b).unwrap());
        prop_assert_eq!(qa.cmp(&qb), ma.cmp(&mb), "{} vs {}", a, b);
        prop_assert_eq!(qa == qb, ma == mb);
        if qa == qb {
            prop_assert_eq!(hash(&qa), hash(&qb));
        }
    }

    #[test]
    fn the_same_value_in_other_units_is_equal(n in 0u64..1_000_000) {
        let plain = Quantity::parse(&n.to_string()).unwrap();
        let milli = Quantity::parse(&format!("{n}000m")).unwrap();
        let exp = Quantity::parse(&format!("{n}e0")).unwrap();
        prop_assert_eq!(&plain, &milli);
        prop_assert_eq!(&plain, &exp);
        let kibi = Quantity::parse(&format!("{n}Ki")).unwrap();
        prop_assert_eq!(kibi, Quantity::parse(&(u128::from(n) * 1024).to_string()).unwrap());
    }
}
