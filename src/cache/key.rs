//! A stage's cache key: blake3 over the canonical JSON (sorted keys, no spaces) of everything that
//! decides its result — kind and its version, covseg's version, params, seed, input digests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cache::digest::Digest;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyParts {
    pub kind: String,
    pub kind_version: u32,
    pub covseg_version: String,
    pub params: serde_json::Value,
    /// Only for kinds that use randomness.
    pub seed: Option<u64>,
    /// The class of device the results were made on (`cpu`, `cuda`, `wgpu`), for kinds that run
    /// on one: `device = "auto"` resolves differently on different machines, and a shared cache
    /// must not hand a CPU machine's checkpoint to a GPU run. Absent for other kinds, so their
    /// keys are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Input name → digest of its content (the path is not part of the key: moving a file with the
    /// same content reuses results).
    pub inputs: BTreeMap<String, Digest>,
}

/// Where each input came from, for `explain`; kept beside the key, not in it.
pub type InputSources = BTreeMap<String, String>;

pub const COVSEG_VERSION: &str = env!("CARGO_PKG_VERSION");

impl KeyParts {
    pub fn key(&self) -> Digest {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        Digest::of_bytes(canonical_json(&value).as_bytes())
    }
}

/// JSON with object keys sorted at every level, so equal values always give equal bytes.
pub fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let body: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

/// Flattens params into `a.b.c = value` lines for comparing and printing.
pub fn flatten(value: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), canonical_json(other));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// What differs between the key of a stage's last run (`old`) and its key now.
pub fn changes(
    old: &KeyParts,
    old_sources: &InputSources,
    new: &KeyParts,
    new_sources: &InputSources,
) -> Vec<String> {
    let mut out = Vec::new();
    if old.kind != new.kind {
        out.push(format!("kind {} → {}", old.kind, new.kind));
    } else if old.kind_version != new.kind_version {
        out.push(format!(
            "kind {} version {} → {}",
            new.kind, old.kind_version, new.kind_version
        ));
    }
    if old.covseg_version != new.covseg_version {
        out.push(format!(
            "covseg version {} → {}",
            old.covseg_version, new.covseg_version
        ));
    }
    if old.device != new.device {
        let show = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".to_owned());
        out.push(format!(
            "device class {} → {}",
            show(&old.device),
            show(&new.device)
        ));
    }
    if old.seed != new.seed {
        let show = |s: Option<u64>| s.map_or_else(|| "unset".to_owned(), |s| s.to_string());
        out.push(format!("seed {} → {}", show(old.seed), show(new.seed)));
    }
    let (a, b) = (flatten(&old.params), flatten(&new.params));
    for key in a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (a.get(key), b.get(key)) {
            (Some(x), Some(y)) if x != y => out.push(format!("params.{key} {x} → {y}")),
            (Some(x), None) => out.push(format!("params.{key} {x} → (removed)")),
            (None, Some(y)) => out.push(format!("params.{key} (new) → {y}")),
            _ => {}
        }
    }
    for name in old
        .inputs
        .keys()
        .chain(new.inputs.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let source = new_sources
            .get(name)
            .or_else(|| old_sources.get(name))
            .cloned()
            .unwrap_or_default();
        match (old.inputs.get(name), new.inputs.get(name)) {
            (Some(x), Some(y)) if x != y => {
                let moved = match (old_sources.get(name), new_sources.get(name)) {
                    (Some(o), Some(n)) if o != n => format!(" (was {o})"),
                    _ => String::new(),
                };
                out.push(format!("input {name} ({source}) changed{moved}"));
            }
            (Some(_), None) => out.push(format!("input {name} ({source}) removed")),
            (None, Some(_)) => out.push(format!("input {name} ({source}) added")),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts() -> KeyParts {
        KeyParts {
            kind: "train".into(),
            kind_version: 1,
            covseg_version: "0.1.0".into(),
            params: json!({"lr": 0.001, "opt": {"b": 1, "a": 2}}),
            seed: Some(7),
            device: None,
            inputs: BTreeMap::from([("images".into(), Digest::of_bytes(b"x"))]),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": {"y": 1, "x": [ {"d": 1, "c": 2} ]}, "a": 0.5});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":0.5,"b":{"x":[{"c":2,"d":1}],"y":1}}"#
        );
    }

    #[test]
    fn key_changes_with_each_part_and_only_then() {
        let base = parts();
        assert_eq!(base.key(), parts().key());
        let mut reordered = parts();
        reordered.params = json!({"opt": {"a": 2, "b": 1}, "lr": 0.001});
        assert_eq!(
            base.key(),
            reordered.key(),
            "key order in params does not matter"
        );
        let variants: [fn(&mut KeyParts); 6] = [
            |p| p.device = Some("cuda".into()),
            |p| p.kind_version = 2,
            |p| p.covseg_version = "0.2.0".into(),
            |p| p.params["lr"] = json!(0.0003),
            |p| p.seed = Some(8),
            |p| {
                p.inputs.insert("images".into(), Digest::of_bytes(b"y"));
            },
        ];
        for change in variants {
            let mut p = parts();
            change(&mut p);
            assert_ne!(base.key(), p.key());
        }
    }

    #[test]
    fn changes_read_like_a_sentence() {
        let old = parts();
        let mut new = parts();
        new.params["lr"] = json!(0.0003);
        new.covseg_version = "0.2.0".into();
        new.inputs.insert("images".into(), Digest::of_bytes(b"y"));
        let sources = InputSources::from([("images".into(), "data/images_medseg.npy".into())]);
        assert_eq!(
            changes(&old, &sources, &new, &sources),
            vec![
                "covseg version 0.1.0 → 0.2.0".to_owned(),
                "params.lr 0.001 → 0.0003".to_owned(),
                "input images (data/images_medseg.npy) changed".to_owned(),
            ]
        );
    }
}
