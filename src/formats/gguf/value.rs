//! GGUF metadata values: typed, with compact arrays.

/// A metadata value. Arrays are typed and compact.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(MetaArray),
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
}

/// GGUF value type ids.
pub mod vtype {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

pub(super) fn vtype_name(t: u32) -> &'static str {
    match t {
        vtype::U8 => "u8",
        vtype::I8 => "i8",
        vtype::U16 => "u16",
        vtype::I16 => "i16",
        vtype::U32 => "u32",
        vtype::I32 => "i32",
        vtype::F32 => "f32",
        vtype::BOOL => "bool",
        vtype::STRING => "string",
        vtype::ARRAY => "array",
        vtype::U64 => "u64",
        vtype::I64 => "i64",
        vtype::F64 => "f64",
        _ => "unknown",
    }
}

impl MetaValue {
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => vtype::U8,
            MetaValue::I8(_) => vtype::I8,
            MetaValue::U16(_) => vtype::U16,
            MetaValue::I16(_) => vtype::I16,
            MetaValue::U32(_) => vtype::U32,
            MetaValue::I32(_) => vtype::I32,
            MetaValue::U64(_) => vtype::U64,
            MetaValue::I64(_) => vtype::I64,
            MetaValue::F32(_) => vtype::F32,
            MetaValue::F64(_) => vtype::F64,
            MetaValue::Bool(_) => vtype::BOOL,
            MetaValue::String(_) => vtype::STRING,
            MetaValue::Array(_) => vtype::ARRAY,
        }
    }

    /// Any integer type (or bool) that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            MetaValue::Bool(v) => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => self.as_u64().filter(|&v| v <= 1).map(|v| v == 1),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A readable type name (`u32`, `array[string; 49152]`).
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::Array(a) => format!("array[{}; {}]", vtype_name(a.elem_type()), a.len()),
            v => vtype_name(v.type_id()).to_string(),
        }
    }

    /// JSON for `inspect`; arrays longer than `max_array` are summarised.
    pub fn to_json(&self, max_array: usize) -> serde_json::Value {
        use serde_json::json;
        match self {
            MetaValue::U8(v) => json!(v),
            MetaValue::I8(v) => json!(v),
            MetaValue::U16(v) => json!(v),
            MetaValue::I16(v) => json!(v),
            MetaValue::U32(v) => json!(v),
            MetaValue::I32(v) => json!(v),
            MetaValue::U64(v) => json!(v),
            MetaValue::I64(v) => json!(v),
            MetaValue::F32(v) => json!(v),
            MetaValue::F64(v) => json!(v),
            MetaValue::Bool(v) => json!(v),
            MetaValue::String(s) => json!(s),
            MetaValue::Array(a) => a.to_json(max_array),
        }
    }
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem_type(&self) -> u32 {
        match self {
            MetaArray::U8(_) => vtype::U8,
            MetaArray::I8(_) => vtype::I8,
            MetaArray::U16(_) => vtype::U16,
            MetaArray::I16(_) => vtype::I16,
            MetaArray::U32(_) => vtype::U32,
            MetaArray::I32(_) => vtype::I32,
            MetaArray::U64(_) => vtype::U64,
            MetaArray::I64(_) => vtype::I64,
            MetaArray::F32(_) => vtype::F32,
            MetaArray::F64(_) => vtype::F64,
            MetaArray::Bool(_) => vtype::BOOL,
            MetaArray::String(_) => vtype::STRING,
            MetaArray::Array(_) => vtype::ARRAY,
        }
    }

    pub fn strings(&self) -> Option<&[String]> {
        match self {
            MetaArray::String(v) => Some(v),
            _ => None,
        }
    }

    /// Integer elements as i64 (any integer element type).
    pub fn ints(&self) -> Option<Vec<i64>> {
        Some(match self {
            MetaArray::U8(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::I8(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::U16(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::I16(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::U32(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::I32(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::U64(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::I64(v) => v.clone(),
            _ => return None,
        })
    }

    pub fn to_json(&self, max_array: usize) -> serde_json::Value {
        use serde_json::json;
        if self.len() > max_array {
            return json!({ "type": vtype_name(self.elem_type()), "len": self.len() });
        }
        match self {
            MetaArray::U8(v) => json!(v),
            MetaArray::I8(v) => json!(v),
            MetaArray::U16(v) => json!(v),
            MetaArray::I16(v) => json!(v),
            MetaArray::U32(v) => json!(v),
            MetaArray::I32(v) => json!(v),
            MetaArray::U64(v) => json!(v),
            MetaArray::I64(v) => json!(v),
            MetaArray::F32(v) => json!(v),
            MetaArray::F64(v) => json!(v),
            MetaArray::Bool(v) => json!(v),
            MetaArray::String(v) => json!(v),
            MetaArray::Array(v) => {
                serde_json::Value::Array(v.iter().map(|a| a.to_json(max_array)).collect())
            }
        }
    }
}
