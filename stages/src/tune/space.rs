//! The search space: which train params a tuning run varies and how. Params are named by their
//! dotted path in the train params (`lr`, `model.encoder_depth`), so any of them can be searched.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// How one param is drawn. Written in TOML as `lr = { log_uniform = [1e-4, 1e-2] }`,
/// `batch_size = { choice = [4, 8, 16] }`, `epochs = { int = [4, 12] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    /// A real number whose logarithm is uniform in [ln low, ln high] (learning rates, decays).
    LogUniform(f64, f64),
    /// A real number uniform in [low, high].
    Uniform(f64, f64),
    /// An integer uniform in low..=high.
    Int(i64, i64),
    /// One of the listed values (numbers, strings, booleans).
    Choice(Vec<Value>),
}

/// One drawn value per searched param, by dotted path.
pub type Sample = BTreeMap<String, Value>;

/// The searched params by dotted path.
pub type SearchSpace = BTreeMap<String, Distribution>;

impl Distribution {
    /// Checks the bounds; the message starts with the param's path.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        match self {
            Self::LogUniform(lo, hi) => {
                if !(lo.is_finite() && hi.is_finite() && *lo > 0.0 && lo < hi) {
                    return Err(format!(
                        "{path}: log_uniform needs 0 < low < high, got [{lo}, {hi}]"
                    ));
                }
            }
            Self::Uniform(lo, hi) => {
                if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                    return Err(format!(
                        "{path}: uniform needs low < high, got [{lo}, {hi}]"
                    ));
                }
            }
            Self::Int(lo, hi) => {
                if lo > hi {
                    return Err(format!("{path}: int needs low ≤ high, got [{lo}, {hi}]"));
                }
            }
            Self::Choice(values) => {
                if values.is_empty() {
                    return Err(format!("{path}: choice needs at least one value"));
                }
            }
        }
        Ok(())
    }

    /// Values that stand for the whole range when checking it against the train params: the
    /// bounds, or every choice.
    pub fn extremes(&self) -> Vec<Value> {
        match self {
            Self::LogUniform(lo, hi) | Self::Uniform(lo, hi) => {
                vec![Value::from(*lo), Value::from(*hi)]
            }
            Self::Int(lo, hi) => vec![Value::from(*lo), Value::from(*hi)],
            Self::Choice(values) => values.clone(),
        }
    }
}

/// `base` with the sample's values written at their paths. A path must name an existing field.
pub fn apply(base: &Value, sample: &Sample) -> Result<Value> {
    let mut out = base.clone();
    for (path, value) in sample {
        set_path(&mut out, path, value.clone())?;
    }
    Ok(out)
}

fn set_path(target: &mut Value, path: &str, value: Value) -> Result<()> {
    let mut node = target;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Value::Object(map) = node else {
            return Err(Error::invalid_param(
                "space",
                format!("{path}: `{}` is not a table", parts[..i].join(".")),
            ));
        };
        if !map.contains_key(*part) {
            let known: Vec<&str> = map.keys().map(String::as_str).collect();
            return Err(Error::invalid_param(
                "space",
                format!(
                    "{path}: the train params have no `{}` (known here: {})",
                    parts[..=i].join("."),
                    known.join(", ")
                ),
            ));
        }
        node = map.get_mut(*part).expect("checked above");
    }
    *node = value;
    Ok(())
}

/// The value at a dotted path, if there is one.
pub fn get_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |node, part| node.get(part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_toml_forms() {
        let space: SearchSpace = toml_from(
            r#"
lr = { log_uniform = [1e-4, 1e-2] }
batch_size = { choice = [4, 8] }
"model.encoder_depth" = { int = [3, 5] }
"#,
        );
        assert_eq!(space["lr"], Distribution::LogUniform(1e-4, 1e-2));
        assert_eq!(
            space["batch_size"],
            Distribution::Choice(vec![json!(4), json!(8)])
        );
        assert_eq!(space["model.encoder_depth"], Distribution::Int(3, 5));
    }

    fn toml_from(text: &str) -> SearchSpace {
        let table: BTreeMap<String, Distribution> = serde_json::from_value(
            serde_json::to_value(text.parse::<TomlLike>().unwrap().0).unwrap(),
        )
        .unwrap();
        table
    }

    /// A tiny parser for the test's TOML, so the domain crate needs no TOML dependency.
    struct TomlLike(BTreeMap<String, Value>);
    impl std::str::FromStr for TomlLike {
        type Err = String;
        fn from_str(s: &str) -> std::result::Result<Self, String> {
            let mut map = BTreeMap::new();
            for line in s.lines().filter(|l| !l.trim().is_empty()) {
                let (k, v) = line.split_once('=').ok_or("no =")?;
                let k = k.trim().trim_matches('"').to_owned();
                let v = v
                    .trim()
                    .trim_start_matches('{')
                    .trim_end_matches('}')
                    .trim();
                let (tag, list) = v.split_once('=').ok_or("no tag")?;
                let list: Value = serde_json::from_str(list.trim()).map_err(|e| e.to_string())?;
                map.insert(k, json!({ tag.trim(): list }));
            }
            Ok(Self(map))
        }
    }

    #[test]
    fn validate_names_the_path_and_the_rule() {
        assert!(
            Distribution::LogUniform(0.0, 1.0)
                .validate("lr")
                .unwrap_err()
                .starts_with("lr:")
        );
        assert!(Distribution::Uniform(2.0, 1.0).validate("x").is_err());
        assert!(Distribution::Choice(vec![]).validate("x").is_err());
        assert!(Distribution::Int(3, 3).validate("x").is_ok());
    }

    #[test]
    fn apply_sets_nested_paths_and_rejects_unknown_ones() {
        let base = json!({"lr": 0.001, "model": {"encoder_depth": 5, "encoder": "plain"}});
        let sample = Sample::from([
            ("lr".into(), json!(0.01)),
            ("model.encoder_depth".into(), json!(3)),
        ]);
        let out = apply(&base, &sample).unwrap();
        assert_eq!(
            out,
            json!({"lr": 0.01, "model": {"encoder_depth": 3, "encoder": "plain"}})
        );
        assert_eq!(get_path(&out, "model.encoder_depth"), Some(&json!(3)));
        let bad = Sample::from([("model.depth".into(), json!(3))]);
        let message = apply(&base, &bad).unwrap_err().to_string();
        assert!(
            message.contains("model.depth") && message.contains("encoder_depth"),
            "{message}"
        );
    }
}
