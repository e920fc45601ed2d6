//! `covseg kinds`: every stage kind with its inputs, outputs and default params.

use std::fmt::Write;

use crate::cache::key;
use crate::pipeline::registry;

/// `covseg kinds`: every kind with its inputs, outputs and default params.
pub fn text(registry: &registry::Registry) -> String {
    let mut out = String::new();
    for kind in registry.kinds() {
        let spec = kind.spec();
        let params = kind
            .params(&toml::Table::new())
            .map(|d| key::flatten(&d))
            .unwrap_or_default();
        let width = spec
            .inputs
            .iter()
            .map(|i| i.name.len())
            .chain(spec.outputs.iter().map(|o| o.name.len()))
            .chain(params.keys().map(String::len))
            .max()
            .unwrap_or(0);
        let _ = writeln!(out, "{} (v{}): {}", spec.name, spec.version, spec.about);
        for i in spec.inputs {
            let optional = if i.required { "" } else { "(optional) " };
            let _ = writeln!(out, "  input  {:width$}  {optional}{}", i.name, i.about);
        }
        for o in spec.outputs {
            let _ = writeln!(out, "  output {:width$}  {} — {}", o.name, o.file, o.about);
        }
        for (k, v) in params {
            let _ = writeln!(out, "  param  {k:width$}  default {v}");
        }
    }
    out
}
