//! A trial's params: the base train params with a sample written in, as TOML the trial kind
//! normalises, and the one-line description the tuner logs.

use serde_json::Value;

use covseg_stages::tune::{Sample, apply};

use crate::pipeline::kind::StageKind;

/// The params of one trial: the base train params with the sample written in, normalised by the
/// trial kind (so they are exactly what a train stage with these params would have).
pub fn trial_params(kind: &dyn StageKind, base: &Value, sample: &Sample) -> Result<Value, String> {
    let full = apply(base, sample).map_err(|e| e.to_string())?;
    let table = json_to_toml_table(&full)?;
    kind.params(&table).map_err(|e| match e.key {
        Some(key) => format!("params.{key}: {}", e.message),
        None => e.message,
    })
}

/// A JSON object as a TOML table; `null` (an unset optional param) is left out.
pub fn json_to_toml_table(value: &Value) -> Result<toml::Table, String> {
    fn strip(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    match toml::Value::try_from(strip(value)) {
        Ok(toml::Value::Table(table)) => Ok(table),
        Ok(_) => Err("expected a table".into()),
        Err(e) => Err(e.to_string()),
    }
}

pub(super) fn describe(sample: &Sample) -> String {
    sample
        .iter()
        .map(|(k, v)| match v.as_f64() {
            Some(x) if v.is_f64() => format!("{k} {x:.3e}"),
            _ => format!("{k} {v}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A trial's key must not move by a last bit between the run that proposes it and a resumed
    /// run that reads its params back from the journal.
    #[test]
    fn trial_params_keep_every_bit_of_the_sample() {
        let base = crate::adapters::Train.params(&toml::Table::new()).unwrap();
        for i in 0..2000u32 {
            let lr = 1e-4 * (1.0 + f64::from(i) * 0.000_731_3).powf(3.7) + 1e-17 * f64::from(i);
            let sample = Sample::from([("lr".to_owned(), json!(lr))]);
            let params = trial_params(&crate::adapters::Train, &base, &sample).unwrap();
            assert_eq!(
                params["lr"].as_f64().unwrap().to_bits(),
                lr.to_bits(),
                "lr {lr:e}"
            );
            let line = serde_json::to_string(&sample).unwrap();
            let back: Sample = serde_json::from_str(&line).unwrap();
            assert_eq!(
                back["lr"].as_f64().unwrap().to_bits(),
                lr.to_bits(),
                "journal {lr:e}"
            );
        }
    }
}
