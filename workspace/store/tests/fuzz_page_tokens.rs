//! Property tests of the page-token parser and of the URL redaction: any text is a
//! token or an `InvalidInput` error, never a panic; accepted tokens are exactly the
//! printed ones (`print(parse(s)) == s`, `parse(print(k)) == k`); a redacted URL never
//! holds the password. Cases: `PROPTEST_CASES` (256).

use ovc_store::Error;
use ovc_store::page_token::{TimeKey, VClusterKey};
use proptest::prelude::*;
use uuid::Uuid;

/// Microseconds chrono can represent (about ±262,000 years).
const MICROS_RANGE: std::ops::RangeInclusive<i64> =
    -8_210_298_412_800_000_000..=8_210_266_876_799_999_999;

fn token_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[0-9]{1,20}\\|[0-9a-fA-F-]{30,40}",
        "[a-z0-9-]{1,12}\\|[a-z0-9-]{1,12}\\|[0-9a-f-]{36}",
        "[0-9a-zA-Z|+-]{0,60}",
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn time_keys_round_trip(at in MICROS_RANGE, id in any::<u128>()) {
        let key = TimeKey { at_micros: at, id: Uuid::from_u128(id) };
        prop_assert_eq!(TimeKey::parse(&key.print()).unwrap(), key);
    }

    #[test]
    fn vcluster_keys_round_trip(
        project in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        name in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        uid in any::<u128>(),
    ) {
        let key = VClusterKey {
            project: project.parse().unwrap(),
            name: name.parse().unwrap(),
            uid: Uuid::from_u128(uid),
        };
        prop_assert_eq!(VClusterKey::parse(&key.print()).unwrap(), key);
    }

    #[test]
    fn any_text_is_a_token_or_invalid_input(s in token_like()) {
        match TimeKey::parse(&s) {
            Ok(k) => prop_assert_eq!(k.print(), s.clone()),
            Err(e) => prop_assert!(matches!(e, Error::InvalidInput(_)), "{e:?}"),
        }
        match VClusterKey::parse(&s) {
            Ok(k) => prop_assert_eq!(k.print(), s),
            Err(e) => prop_assert!(matches!(e, Error::InvalidInput(_)), "{e:?}"),
        }
    }

    #[test]
    fn redacted_urls_never_hold_the_password(
        user in "[a-z]{1,8}",
        password in "[a-zA-Z0-9!$%'()*+,;=@:/.~_-]{1,24}",
        host in "[a-z]{1,8}(:[0-9]{1,5})?",
    ) {
        let url = format!("postgres://{user}:{password}@{host}/ovc?sslmode=require");
        prop_assert_eq!(
            ovc_store::redact_url(&url),
            format!("postgres://{user}:***@{host}/ovc?sslmode=require")
        );
        prop_assert_eq!(
            ovc_store::redact_url(&format!("postgresql://{host}/ovc?user={user}&password={password}")),
            format!("postgresql://{host}/ovc?user={user}&password=***")
        );
    }
}
