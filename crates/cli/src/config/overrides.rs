//! Reading a config: its file, then `--set key=value` overrides in order; a value that does
//! not deserialise is blamed on the file or on the `--set` that broke it.

use std::path::Path;

use anyhow::{Context, bail};

use super::Config;

/// Apply one `--set key=value` to a config table.
fn apply_override(table: &mut toml::Table, o: &str) -> anyhow::Result<()> {
    let (key, value) =
        o.split_once('=').with_context(|| format!("--set {o}: expected key=value, e.g. --set train.steps=100"))?;
    // A whole number TOML cannot hold would otherwise fall through to a string and be
    // reported as "invalid type: string".
    let number = value.trim();
    let digits = number.strip_prefix(['-', '+']).unwrap_or(number);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && number.parse::<i64>().is_err() {
        bail!("--set {o}: {number} is out of range (a config number is at most {})", i64::MAX);
    }
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let mut parts: Vec<&str> = key.trim().split('.').collect();
    let last = parts.pop().filter(|k| !k.is_empty()).with_context(|| format!("--set {o}: empty key"))?;
    let mut node = table;
    for p in parts {
        node = node
            .entry(p)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {o}: `{p}` is not a section"))?;
    }
    merge(node, last, value);
    Ok(())
}

/// Set `key` of `table` to `value`; a table value is merged key by key into the table already
/// there (so `--set 'augment={class_rotation=true}'` changes that key alone, as
/// `--set augment.class_rotation=true` does, instead of dropping the section's other keys).
fn merge(table: &mut toml::Table, key: &str, value: toml::Value) {
    match (table.get_mut(key), value) {
        (Some(toml::Value::Table(existing)), toml::Value::Table(new)) => {
            for (k, v) in new {
                merge(existing, &k, v);
            }
        }
        (_, value) => {
            table.insert(key.to_owned(), value);
        }
    }
}

/// The error of a config that does not deserialise, blamed on its source: a type error in the
/// file itself gets toml's own message (line, and the offending `key = value`); otherwise the
/// first `--set` after which the config no longer reads is named.
fn blame(
    text: &str,
    origin: &str,
    mut table: toml::Table,
    overrides: &[String],
    merged: toml::de::Error,
) -> anyhow::Error {
    if let Err(e) = toml::from_str::<Config>(text)
        && !e.message().starts_with("missing field")
    {
        return anyhow::anyhow!("{origin}: {}", e.to_string().trim());
    }
    for o in overrides {
        if apply_override(&mut table, o).is_err() {
            break;
        }
        if let Err(e) = table.clone().try_into::<Config>()
            && !e.message().starts_with("missing field")
        {
            return anyhow::anyhow!("--set {o}: {}", e.message().trim());
        }
    }
    anyhow::anyhow!("{origin}: {}", merged.message().trim())
}

impl Config {
    /// Read a config file and apply `key=value` overrides (dotted keys, TOML values; a value
    /// that does not parse as TOML is taken as a string), without range checks (see
    /// [`crate::settings::Settings::load`]).
    pub fn load(path: &Path, overrides: &[String]) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parse config text (`origin` names it in errors) with overrides, without range checks (see
    /// [`crate::settings::Settings::load`]).
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> anyhow::Result<Config> {
        let mut table: toml::Table = toml::from_str(text).with_context(|| format!("{origin} is not valid TOML"))?;
        let file_table = table.clone();
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let config: Config = match table.try_into() {
            Ok(c) => c,
            Err(e) => return Err(blame(text, origin, file_table, overrides, e)),
        };
        Ok(config)
    }
}
