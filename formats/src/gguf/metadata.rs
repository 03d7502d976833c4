//! [`Metadata`]: the ordered key-value table of a GGUF file, with typed accessors whose errors name
//! the key, the expected type and what was found.

use std::collections::HashMap;

use super::value::{Array, Value};
use crate::{Error, Result};

/// GGUF metadata: entries in file order plus an index by key. Keys are unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

fn missing(key: &str) -> Error {
    Error::Format(format!("missing metadata key `{key}`"))
}

fn wrong_type(key: &str, expected: &str, found: &Value) -> Error {
    Error::Format(format!(
        "metadata `{key}`: expected {expected}, found {}",
        found.describe()
    ))
}

impl Metadata {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets `key` to `value`: replaces the value in place if the key exists, else appends.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let key = key.into();
        let value = value.into();
        match self.index.get(&key) {
            Some(&i) => {
                if let Some(entry) = self.entries.get_mut(i) {
                    entry.1 = value;
                }
            }
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }

    /// Appends a new entry; returns false (and changes nothing) if the key exists.
    pub(crate) fn insert_new(&mut self, key: String, value: Value) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let &i = self.index.get(key)?;
        self.entries.get(i).map(|(_, v)| v)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Removes `key`, keeping the order of the other entries.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.index.remove(key)?;
        if i >= self.entries.len() {
            return None;
        }
        let (_, value) = self.entries.remove(i);
        for slot in self.index.values_mut() {
            if *slot > i {
                *slot -= 1;
            }
        }
        Some(value)
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    fn need(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| missing(key))
    }

    /// An integer of any type, converted to `T` if it fits.
    fn integer<T: TryFrom<i128>>(&self, key: &str, type_name: &str) -> Result<T> {
        let value = self.need(key)?;
        let Some(wide) = value.as_i128() else {
            return Err(wrong_type(key, &format!("an integer ({type_name})"), value));
        };
        T::try_from(wide).map_err(|_| {
            Error::Format(format!(
                "metadata `{key}`: {} does not fit in {type_name}",
                value.describe()
            ))
        })
    }

    /// A `u32`: any integer type whose value fits.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.integer(key, "u32")
    }

    /// A `u64`: any integer type whose value fits.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.integer(key, "u64")
    }

    /// A `usize`: any integer type whose value fits.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.integer(key, "usize")
    }

    /// An `f32`: an `f32`, an `f64` that is finite and in range, or any integer.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let value = self.need(key)?;
        match *value {
            Value::F32(v) => Ok(v),
            Value::F64(v) if v.is_finite() && v.abs() <= f64::from(f32::MAX) => Ok(v as f32),
            Value::F64(_) => Err(Error::Format(format!(
                "metadata `{key}`: {} is not a finite value in the range of f32",
                value.describe()
            ))),
            _ => match value.as_i128() {
                Some(v) => Ok(v as f32),
                None => Err(wrong_type(key, "a number (f32)", value)),
            },
        }
    }

    /// A bool.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let value = self.need(key)?;
        value
            .as_bool()
            .ok_or_else(|| wrong_type(key, "bool", value))
    }

    /// A string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let value = self.need(key)?;
        value
            .as_str()
            .ok_or_else(|| wrong_type(key, "string", value))
    }

    /// An array of any element type.
    pub fn get_array(&self, key: &str) -> Result<&Array> {
        let value = self.need(key)?;
        value
            .as_array()
            .ok_or_else(|| wrong_type(key, "array", value))
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        let value = self.need(key)?;
        match value {
            Value::Array(Array::String(v)) => Ok(v),
            _ => Err(wrong_type(key, "array of string", value)),
        }
    }

    /// An array of `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        let value = self.need(key)?;
        match value {
            Value::Array(Array::I32(v)) => Ok(v),
            _ => Err(wrong_type(key, "array of i32", value)),
        }
    }

    /// An array of `f32`.
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        let value = self.need(key)?;
        match value {
            Value::Array(Array::F32(v)) => Ok(v),
            _ => Err(wrong_type(key, "array of f32", value)),
        }
    }

    /// [`Metadata::get_u32`], or `None` when the key is absent.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.optional(key, Self::get_u32)
    }

    /// [`Metadata::get_usize`], or `None` when the key is absent.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.optional(key, Self::get_usize)
    }

    /// [`Metadata::get_f32`], or `None` when the key is absent.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.optional(key, Self::get_f32)
    }

    /// [`Metadata::get_bool`], or `None` when the key is absent.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.optional(key, Self::get_bool)
    }

    /// [`Metadata::get_str`], or `None` when the key is absent.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.optional(key, Self::get_str)
    }

    fn optional<'a, T>(
        &'a self,
        key: &str,
        get: impl FnOnce(&'a Self, &str) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.contains(key) {
            get(self, key).map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn set_replaces_in_place_and_remove_keeps_order() {
        let mut m = Metadata::new();
        m.set("a", 1u32);
        m.set("b", "x");
        m.set("c", true);
        m.set("a", 2u32);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(m.get_u32("a").unwrap(), 2);
        assert_eq!(m.remove("b"), Some(Value::from("x")));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert!(m.get_bool("c").unwrap());
        assert!(!m.contains("b"));
        m.set("b", 3i32);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "c", "b"]);
    }

    #[test]
    fn typed_accessors_convert_and_explain() {
        let mut m = Metadata::new();
        m.set("neg", -5i32);
        m.set("big", u64::MAX);
        m.set("small", 7u8);
        m.set("f64", Value::F64(1e-5));
        m.set("huge", Value::F64(1e300));
        m.set("s", "hello");
        m.set("toks", vec!["a".to_string()]);
        assert_eq!(m.get_u32("small").unwrap(), 7);
        assert_eq!(m.get_usize("small").unwrap(), 7);
        assert_eq!(m.get_f32("small").unwrap(), 7.0);
        assert_eq!(m.get_f32("f64").unwrap(), 1e-5f64 as f32);
        assert_eq!(m.get_u64("big").unwrap(), u64::MAX);
        let e = m.get_u32("neg").unwrap_err().to_string();
        assert!(
            e.contains("`neg`") && e.contains("u32") && e.contains("-5"),
            "{e}"
        );
        let e = m.get_u32("big").unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
        let e = m.get_f32("huge").unwrap_err().to_string();
        assert!(e.contains("f32"), "{e}");
        let e = m.get_u32("s").unwrap_err().to_string();
        assert!(e.contains("`s`") && e.contains("string"), "{e}");
        let e = m.get_str("nope").unwrap_err().to_string();
        assert_eq!(e, "missing metadata key `nope`");
        assert_eq!(m.get_str_array("toks").unwrap(), ["a"]);
        let e = m.get_i32_array("toks").unwrap_err().to_string();
        assert!(
            e.contains("array of i32") && e.contains("array of 1 string"),
            "{e}"
        );
        assert_eq!(m.opt_u32("nope").unwrap(), None);
        assert_eq!(m.opt_str("s").unwrap(), Some("hello"));
        assert!(m.opt_bool("s").is_err());
    }
}
