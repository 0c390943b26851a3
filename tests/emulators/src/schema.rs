//! A deterministic JSON instance for a JSON schema: what the emulator answers for tool
//! arguments and `json_schema` response formats.
//!
//! Objects get their required properties (all of them when none is required); strings are
//! `"Paris"` or the first `enum` value; numbers and integers `1`; booleans `true`; arrays
//! `[]`; objects without properties `{}`. `$ref` into `$defs`/`definitions`, `anyOf`,
//! `oneOf` and `allOf` (first branch), `const` and type lists (first non-null) are followed.

use serde_json::{Map, Value};

const MAX_DEPTH: usize = 16;

/// An instance of `schema`.
pub fn instance(schema: &Value) -> Value {
    gen_value(schema, schema, 0)
}

fn gen_value(root: &Value, schema: &Value, depth: usize) -> Value {
    let Some(obj) = schema.as_object() else {
        return Value::Null;
    };
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(v) = obj.get("const") {
        return v.clone();
    }
    if let Some(first) = obj.get("enum").and_then(Value::as_array).and_then(|a| a.first()) {
        return first.clone();
    }
    if let Some(target) = obj
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| resolve(root, r))
    {
        return gen_value(root, target, depth + 1);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(branches) = obj.get(key).and_then(Value::as_array) {
            let branch = branches
                .iter()
                .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .or_else(|| branches.first());
            if let Some(branch) = branch {
                return gen_value(root, branch, depth + 1);
            }
        }
    }
    let ty = match obj.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .or(Some("null")),
        _ if obj.contains_key("properties") => Some("object"),
        _ => None,
    };
    match ty {
        Some("string") => Value::String("Paris".to_owned()),
        Some("number" | "integer") => Value::from(1),
        Some("boolean") => Value::Bool(true),
        Some("array") => Value::Array(Vec::new()),
        Some("object") => gen_object(root, obj, depth),
        _ => Value::Null,
    }
}

fn gen_object(root: &Value, obj: &Map<String, Value>, depth: usize) -> Value {
    let mut out = Map::new();
    let Some(props) = obj.get("properties").and_then(Value::as_object) else {
        return Value::Object(out);
    };
    let required: Vec<&str> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, prop) in props {
        if required.is_empty() || required.contains(&name.as_str()) {
            out.insert(name.clone(), gen_value(root, prop, depth + 1));
        }
    }
    Value::Object(out)
}

/// Resolves a local JSON pointer such as `#/$defs/City`.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    root.pointer(pointer)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fills_required_properties_by_type() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "when": {"$ref": "#/$defs/When"},
                "note": {"type": "string"}
            },
            "required": ["city", "unit", "days", "when"],
            "$defs": {"When": {"type": "object", "properties": {"iso": {"type": ["string", "null"]}, "all": {"type": "boolean"}}}}
        });
        assert_eq!(
            instance(&schema),
            json!({"city": "Paris", "unit": "celsius", "days": 1, "when": {"iso": "Paris", "all": true}})
        );
    }
}
