//! Generates the method reference in `docs/rpc.md` from a registry, so the document
//! cannot drift from the code (a test compares the two).

use std::fmt::Write;

use super::registry::Registry;

/// Markdown table of every method: name, parameters, help. Aliases are listed with
/// the method they stand for.
pub fn methods_markdown(reg: &Registry) -> String {
    let mut s = String::new();
    s.push_str("| Method | Params | Description |\n|---|---|---|\n");
    for m in reg.methods() {
        let params = if m.params.is_empty() {
            "none".to_string()
        } else {
            let list = m.params.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ");
            if m.params_optional {
                format!("optional: {list}")
            } else {
                list
            }
        };
        let help = match &m.alias_of {
            Some(target) => format!("Deprecated alias of `{target}`"),
            None => m.help.replace('|', "\\|"),
        };
        let _ = writeln!(s, "| `{}` | {} | {} |", m.name, params, help);
    }
    s
}
