//! `REFUND_AGENT__SECTION__KEY=value` overrides, written into the parsed table before the raw
//! structs see it, so an override is checked exactly like the key it replaces.

use super::{invalid, ConfigError};

/// Applies every `REFUND_AGENT__…` variable of `env` to `table`; other variables are ignored.
pub(super) fn apply(
    table: &mut toml::Table,
    env: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(path) = name.strip_prefix("REFUND_AGENT__") else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(String::is_empty) || parts.len() < 2 {
            return Err(invalid(
                name.clone(),
                "environment override must look like REFUND_AGENT__SECTION__KEY",
            ));
        }
        let parsed: toml::Value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let mut cursor = &mut *table;
        for part in &parts[..parts.len() - 1] {
            let entry = cursor.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = entry
                .as_table_mut()
                .ok_or_else(|| invalid(name.clone(), format!("`{part}` is not a table")))?;
        }
        cursor.insert(parts[parts.len() - 1].clone(), parsed);
    }
    Ok(())
}
