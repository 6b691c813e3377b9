//! The one JSON reader and the one atomic writer.
//!
//! Every config, tokenizer and conversation file goes through these, so every
//! malformed file gets the same one-line message naming the file.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;

/// Reads and parses a JSON file.
pub fn read_value(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))
}

/// Reads a JSON file whose top level must be an object.
pub fn read_object(path: &Path) -> Result<Map<String, Value>> {
    match read_value(path)? {
        Value::Object(map) => Ok(map),
        _ => bail!(
            "{}: expected a JSON object at the top level",
            path.display()
        ),
    }
}

/// "a string", "a list", …: what a JSON value is, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Writes `value` as pretty-printed JSON, atomically.
pub fn write_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut json = serde_json::to_string_pretty(value)
        .with_context(|| format!("{}: cannot serialize", path.display()))?;
    json.push('\n');
    super::atomic::write_file_atomic(path, |w| std::io::Write::write_all(w, json.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_messages() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, &serde_json::json!({"x": [1, 2]})).unwrap();
        assert_eq!(read_object(&p).unwrap()["x"], serde_json::json!([1, 2]));
        std::fs::write(&p, "[1]").unwrap();
        let e = read_object(&p).unwrap_err().to_string();
        assert!(e.contains("a.json: expected a JSON object"), "{e}");
        std::fs::write(&p, "{").unwrap();
        let e = read_value(&p).unwrap_err().to_string();
        assert!(e.contains("a.json: invalid JSON"), "{e}");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
