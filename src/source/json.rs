//! The decoder's JSON reader: a message's top-level fields in order, strings borrowed from the
//! payload where they can be, nested values skipped (only their kind kept, for the error).
//! Built on serde's visitor so that no `serde_json::Value` tree is allocated per message.

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A message as the decoder reads it: a top-level object's fields, in order, or what else it
/// was. Strings borrow from the payload where they can; nested arrays and objects are skipped
/// (no field takes one) and only their kind is kept, for the error message.
pub(super) enum Doc<'a> {
    Object(Vec<(Cow<'a, str>, J<'a>)>),
    Other(&'static str),
}

/// One JSON value of a top-level field.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum J<'a> {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above i64::MAX.
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl J<'_> {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn as_f64(&self) -> Option<f64> {
        match self {
            J::Int(n) => Some(*n as f64),
            J::UInt(n) => Some(*n as f64),
            J::Float(x) => Some(*x),
            _ => None,
        }
    }

    pub(super) fn as_bool(&self) -> Option<bool> {
        match self {
            J::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// The fields of a message; a repeated key counts as its last occurrence (as serde_json's map).
pub(super) struct Members<'a>(pub(super) Vec<(Cow<'a, str>, J<'a>)>);

impl<'a> Members<'a> {
    pub(super) fn get(&self, name: &str) -> Option<&J<'a>> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// Visits one JSON value into `J` (nested containers are skipped).
pub(super) struct JVisitor;

impl<'de> Visitor<'de> for JVisitor {
    type Value = J<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_none<E>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<J<'de>, E> {
        Ok(J::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<J<'de>, E> {
        Ok(J::Int(n))
    }
    fn visit_u64<E>(self, n: u64) -> Result<J<'de>, E> {
        Ok(i64::try_from(n).map_or(J::UInt(n), J::Int))
    }
    fn visit_f64<E>(self, x: f64) -> Result<J<'de>, E> {
        Ok(J::Float(x))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(s.to_string())))
    }
    fn visit_string<E>(self, s: String) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(J::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(J::Object)
    }
}

impl<'de> Deserialize<'de> for J<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JVisitor)
    }
}

/// A field name, borrowed when it has no escapes.
pub(super) struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Doc<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DocVisitor;
        impl<'de> Visitor<'de> for DocVisitor {
            type Value = Doc<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON document")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc<'de>, A::Error> {
                let mut fields = Vec::with_capacity(12);
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, J<'de>>()? {
                    fields.push((k, v));
                }
                Ok(Doc::Object(fields))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Doc::Other("an array"))
            }
            fn visit_unit<E>(self) -> Result<Doc<'de>, E> {
                Ok(Doc::Other("null"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Doc<'de>, E> {
                Ok(Doc::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Doc<'de>, E> {
                Ok(Doc::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Doc<'de>, E> {
                Ok(Doc::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Doc<'de>, E> {
                Ok(Doc::Other("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Doc<'de>, E> {
                Ok(Doc::Other("a string"))
            }
        }
        d.deserialize_any(DocVisitor)
    }
}

pub(super) fn json_kind(v: &J<'_>) -> &'static str {
    match v {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Int(_) | J::UInt(_) | J::Float(_) => "a number",
        J::Str(_) => "a string",
        J::Array => "an array",
        J::Object => "an object",
    }
}
