//! Property tests of the name parsers (vcluster and project names, label keys and
//! values): any input gives a value or an error, never a panic; what is accepted is
//! exactly what the Kubernetes grammar allows (checked against an independent regex-free
//! oracle) and round-trips through its text and JSON. Cases: `PROPTEST_CASES` (256).

use ovc_types::name::{validate_label_key, validate_label_value};
use ovc_types::{ProjectName, VClusterName};
use proptest::prelude::*;

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` of 1..=max bytes.
fn is_dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= max && b.iter().all(inner) && edge(&b[0]) && edge(&b[b.len() - 1])
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63.
fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(inner)
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        None => is_qualified_part(s),
        Some((prefix, name)) => {
            prefix.len() <= 253
                && prefix.split('.').all(|seg| is_dns_label(seg, 253))
                && is_qualified_part(name)
        }
    }
}

/// Strings near the grammar (its alphabet plus some troublemakers), and anything.
fn name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{0,45}",
        "[a-zA-Z0-9._/-]{0,70}",
        "[a-z0-9.-]{1,20}/[A-Za-z0-9._-]{0,65}",
        "[a-z0-9-]{0,10}[\\x00-\\x7f\u{e9}\u{3b1}\u{1f600}][a-z0-9-]{0,10}",
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn vcluster_names_accept_exactly_dns_labels_up_to_40(s in name_like()) {
        match VClusterName::new(s.clone()) {
            Ok(n) => {
                prop_assert!(is_dns_label(&s, 40), "accepted {s:?}");
                prop_assert_eq!(n.as_str(), s.as_str());
                prop_assert_eq!(n.to_string().parse::<VClusterName>().unwrap(), n.clone());
                let json = serde_json::to_string(&n).unwrap();
                prop_assert_eq!(serde_json::from_str::<VClusterName>(&json).unwrap(), n);
            }
            Err(e) => {
                prop_assert!(!is_dns_label(&s, 40), "refused {s:?}: {e}");
                prop_assert!(!e.to_string().is_empty());
                let json = serde_json::to_string(&s).unwrap();
                prop_assert!(serde_json::from_str::<VClusterName>(&json).is_err());
            }
        }
    }

    #[test]
    fn project_names_accept_exactly_dns_labels_up_to_63(s in name_like()) {
        match ProjectName::new(s.clone()) {
            Ok(n) => {
                prop_assert!(is_dns_label(&s, 63), "accepted {s:?}");
                prop_assert_eq!(n.to_string().parse::<ProjectName>().unwrap(), n);
            }
            Err(_) => prop_assert!(!is_dns_label(&s, 63), "refused {s:?}"),
        }
    }

    #[test]
    fn valid_names_are_always_accepted(s in "[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?") {
        prop_assert!(VClusterName::new(s.clone()).is_ok());
        prop_assert!(ProjectName::new(s).is_ok());
    }

    #[test]
    fn label_keys_accept_exactly_the_kubernetes_grammar(s in name_like()) {
        let accepted = validate_label_key(&s).is_ok();
        prop_assert_eq!(accepted, is_label_key(&s), "label key {:?}", s);
    }

    #[test]
    fn label_values_accept_exactly_the_kubernetes_grammar(s in name_like()) {
        let accepted = validate_label_value(&s).is_ok();
        prop_assert_eq!(accepted, s.is_empty() || is_qualified_part(&s), "label value {:?}", s);
    }
}
