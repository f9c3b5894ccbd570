//! Property tests of the spec parser (`VClusterSpec` and `ScalePatch` from JSON, as the
//! API reads request bodies): any JSON gives a spec or an error, never a panic; a spec
//! that is accepted and valid round-trips through JSON and stays valid; a patch applied
//! to a valid spec gives a valid spec or an error. Cases: `PROPTEST_CASES` (256).

use ovc_types::spec::{ScalePatch, VClusterSpec};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Any JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z0-9.]{0,8}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn quantity() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[0-9]{1,4}(m|Mi|Gi|k|)".prop_map(Value::from),
        (0u64..100_000).prop_map(Value::from),
        any_json(),
    ]
}

/// Objects shaped like a spec: the real field names with plausible or random values.
fn spec_like() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![
            "1\\.[0-9]{1,2}(\\.[0-9]{1,3})?".prop_map(Value::from),
            any_json()
        ]),
        prop::option::of(prop_oneof![Just(json!("k8s")), any_json()]),
        prop::option::of((0u32..5, quantity(), quantity())),
        prop::option::of((quantity(), quantity(), 0u32..20_000, quantity())),
        prop::option::of(prop::collection::btree_map(
            "[a-zA-Z0-9./_-]{0,20}",
            "[a-zA-Z0-9._-]{0,20}",
            0..4,
        )),
        prop::option::of(any_json()),
    )
        .prop_map(|(version, distro, cp, quota, labels, extra)| {
            let mut o = serde_json::Map::new();
            if let Some(v) = version {
                o.insert("kubernetes_version".into(), v);
            }
            if let Some(d) = distro {
                o.insert("distro".into(), d);
            }
            if let Some((replicas, cpu, memory)) = cp {
                o.insert(
                    "control_plane".into(),
                    json!({"replicas": replicas, "cpu": cpu, "memory": memory}),
                );
            }
            if let Some((cpu, memory, pods, storage)) = quota {
                o.insert(
                    "quota".into(),
                    json!({"cpu": cpu, "memory": memory, "pods": pods, "storage": storage}),
                );
            }
            if let Some(l) = labels {
                o.insert("labels".into(), json!(l));
            }
            if let Some(e) = extra {
                o.insert("helm_values".into(), e);
            }
            Value::Object(o)
        })
}

proptest! {
    #[test]
    fn any_json_is_a_spec_or_an_error(v in prop_oneof![any_json(), spec_like()]) {
        let text = v.to_string();
        if let Ok(spec) = serde_json::from_str::<VClusterSpec>(&text) {
            let valid = spec.validate().is_ok();
            let back: VClusterSpec =
                serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
            prop_assert_eq!(&back, &spec);
            prop_assert_eq!(back.validate().is_ok(), valid);
        }
    }

    #[test]
    fn a_patch_of_a_valid_spec_is_valid_or_refused(v in prop_oneof![any_json(), spec_like()]) {
        let text = v.to_string();
        if let Ok(patch) = serde_json::from_str::<ScalePatch>(&text) {
            let base = VClusterSpec::default();
            if let Ok(spec) = patch.apply_to(&base) {
                prop_assert!(spec.validate().is_ok(), "patch {} gave an invalid spec", text);
            }
        }
    }

    #[test]
    fn bytes_that_are_not_json_are_an_error(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = serde_json::from_slice::<VClusterSpec>(&bytes);
        let _ = serde_json::from_slice::<ScalePatch>(&bytes);
    }
}
