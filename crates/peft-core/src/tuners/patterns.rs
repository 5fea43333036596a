//! `rank_pattern` / `alpha_pattern`: per-module overrides keyed by module-path patterns,
//! shared by the methods that have them (LoRA, LoHa, LoKr, AdaLoRA...).
use super::targeting::full_regex;
use crate::error::Result;
use serde_json::Value;
use std::path::Path;

/// Pattern entries in the order the JSON text has them (None when there is no such object).
pub type Ordered = Option<Vec<(String, Value)>>;

/// `get_pattern_key` + lookup: the value of the first pattern `p` (in the config's order)
/// for which `(.*\.)?(p)$` matches the module path.
pub fn pattern_value<'v, V>(patterns: &'v [(String, V)], key: &str, field: &str, file: &Path) -> Result<Option<&'v V>> {
    for (p, v) in patterns {
        if full_regex(&format!(r"(.*\.)?({p})"), field, file)?.is_match(key) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// `rank_pattern` and `alpha_pattern` in file order (serde_json's map sorts keys).
pub fn ordered_patterns(raw: &str) -> (Ordered, Ordered) {
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(default)]
        rank_pattern: Option<OrderedMap>,
        #[serde(default)]
        alpha_pattern: Option<OrderedMap>,
    }
    struct OrderedMap(Vec<(String, Value)>);
    impl<'de> serde::Deserialize<'de> for OrderedMap {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = OrderedMap;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<OrderedMap, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = m.next_entry::<String, Value>()? {
                        v.push(e);
                    }
                    Ok(OrderedMap(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    match serde_json::from_str::<P>(raw) {
        Ok(p) => (p.rank_pattern.map(|m| m.0), p.alpha_pattern.map(|m| m.0)),
        Err(_) => (None, None),
    }
}
