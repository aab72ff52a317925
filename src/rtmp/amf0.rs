//! A strict AMF0 reader with a nesting limit, and the writer the guard's
//! replies are encoded with.
//!
//! Commands and data messages are AMF0 value sequences. The reader is the
//! guard's own because a general decoder without a depth limit can be made to
//! overflow the stack by a 60 KB `connect`. Objects keep their key order and
//! duplicate keys, exactly as the sender wrote them, so the guard sees the
//! same thing an origin would. Every length is checked against what is left
//! of the message: a truncated value is an error, never zero-padded.

use std::fmt;

/// AMF0 type markers.
mod marker {
    pub const NUMBER: u8 = 0x00;
    pub const BOOLEAN: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const OBJECT: u8 = 0x03;
    pub const NULL: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const REFERENCE: u8 = 0x07;
    pub const ECMA_ARRAY: u8 = 0x08;
    pub const OBJECT_END: u8 = 0x09;
    pub const STRICT_ARRAY: u8 = 0x0A;
    pub const DATE: u8 = 0x0B;
    pub const LONG_STRING: u8 = 0x0C;
    pub const UNSUPPORTED: u8 = 0x0D;
    pub const XML_DOCUMENT: u8 = 0x0F;
    pub const TYPED_OBJECT: u8 = 0x10;
}

/// One decoded AMF0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Vec<(String, Amf0Value)>),
    Null,
    Undefined,
    Reference(u16),
    EcmaArray(Vec<(String, Amf0Value)>),
    StrictArray(Vec<Amf0Value>),
    Date {
        millis: f64,
        timezone: i16,
    },
    LongString(String),
    Unsupported,
    XmlDocument(String),
    TypedObject {
        class: String,
        properties: Vec<(String, Amf0Value)>,
    },
}

impl Amf0Value {
    /// The value's AMF0 type, for logs.
    pub fn type_name(&self) -> &'static str {
        match self {
            Amf0Value::Number(_) => "number",
            Amf0Value::Boolean(_) => "boolean",
            Amf0Value::String(_) => "string",
            Amf0Value::Object(_) => "object",
            Amf0Value::Null => "null",
            Amf0Value::Undefined => "undefined",
            Amf0Value::Reference(_) => "reference",
            Amf0Value::EcmaArray(_) => "ecma-array",
            Amf0Value::StrictArray(_) => "strict-array",
            Amf0Value::Date { .. } => "date",
            Amf0Value::LongString(_) => "long-string",
            Amf0Value::Unsupported => "unsupported",
            Amf0Value::XmlDocument(_) => "xml-document",
            Amf0Value::TypedObject { .. } => "typed-object",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) | Amf0Value::LongString(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The properties of an object-like value.
    pub fn properties(&self) -> Option<&[(String, Amf0Value)]> {
        match self {
            Amf0Value::Object(p) | Amf0Value::EcmaArray(p) => Some(p),
            Amf0Value::TypedObject { properties, .. } => Some(properties),
            _ => None,
        }
    }

    /// The first property named `key`, as the origins read it.
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        self.properties()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Amf0Error {
    /// A value or length runs past the end of the message.
    Truncated { offset: usize },
    /// A marker AMF0 does not define, or one not allowed here.
    UnknownMarker { marker: u8, offset: usize },
    /// Nesting deeper than the configured limit.
    TooDeep { limit: usize },
}

impl fmt::Display for Amf0Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amf0Error::Truncated { offset } => write!(f, "AMF0 value truncated at byte {offset}"),
            Amf0Error::UnknownMarker { marker, offset } => {
                write!(f, "unknown AMF0 marker {marker:#04x} at byte {offset}")
            }
            Amf0Error::TooDeep { limit } => write!(f, "AMF0 nesting deeper than {limit}"),
        }
    }
}

impl std::error::Error for Amf0Error {}

/// Decodes every value in `data`.
pub fn read_all(data: &[u8], max_depth: usize) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut reader = Reader {
        data,
        pos: 0,
        max_depth,
    };
    let mut values = Vec::new();
    while reader.pos < data.len() {
        values.push(reader.value(0)?);
    }
    Ok(values)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Amf0Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(Amf0Error::Truncated { offset: self.pos })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, Amf0Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Amf0Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Amf0Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, Amf0Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_be_bytes(a))
    }

    fn utf8(&mut self, len: usize) -> Result<String, Amf0Error> {
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    fn short_string(&mut self) -> Result<String, Amf0Error> {
        let len = self.u16()?;
        self.utf8(usize::from(len))
    }

    fn long_string(&mut self) -> Result<String, Amf0Error> {
        let len = self.u32()?;
        self.utf8(len as usize)
    }

    fn value(&mut self, depth: usize) -> Result<Amf0Value, Amf0Error> {
        let offset = self.pos;
        let m = self.u8()?;
        Ok(match m {
            marker::NUMBER => Amf0Value::Number(self.f64()?),
            marker::BOOLEAN => Amf0Value::Boolean(self.u8()? != 0),
            marker::STRING => Amf0Value::String(self.short_string()?),
            marker::OBJECT => Amf0Value::Object(self.properties(depth + 1)?),
            marker::NULL => Amf0Value::Null,
            marker::UNDEFINED => Amf0Value::Undefined,
            marker::REFERENCE => Amf0Value::Reference(self.u16()?),
            marker::ECMA_ARRAY => {
                // The count is advisory; the end marker is what ends it.
                self.u32()?;
                Amf0Value::EcmaArray(self.properties(depth + 1)?)
            }
            marker::STRICT_ARRAY => {
                self.enter(depth + 1)?;
                let count = self.u32()?;
                // Never pre-allocate from a length the sender chose: every
                // element is at least one byte, so truncation ends the loop.
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Amf0Value::StrictArray(items)
            }
            marker::DATE => {
                let millis = self.f64()?;
                let timezone = self.u16()? as i16;
                Amf0Value::Date { millis, timezone }
            }
            marker::LONG_STRING => Amf0Value::LongString(self.long_string()?),
            marker::UNSUPPORTED => Amf0Value::Unsupported,
            marker::XML_DOCUMENT => Amf0Value::XmlDocument(self.long_string()?),
            marker::TYPED_OBJECT => {
                let class = self.short_string()?;
                Amf0Value::TypedObject {
                    class,
                    properties: self.properties(depth + 1)?,
                }
            }
            // MovieClip (4), RecordSet (14) are reserved; ObjectEnd (9) is
            // only valid inside an object; AvmPlus (17) switches to AMF3,
            // which the guard does not read.
            other => {
                return Err(Amf0Error::UnknownMarker {
                    marker: other,
                    offset,
                })
            }
        })
    }

    fn enter(&self, depth: usize) -> Result<(), Amf0Error> {
        if depth > self.max_depth {
            Err(Amf0Error::TooDeep {
                limit: self.max_depth,
            })
        } else {
            Ok(())
        }
    }

    /// Key/value pairs up to the empty-key end marker.
    fn properties(&mut self, depth: usize) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
        self.enter(depth)?;
        let mut props = Vec::new();
        loop {
            let key = self.short_string()?;
            if key.is_empty() && self.data.get(self.pos) == Some(&marker::OBJECT_END) {
                self.pos += 1;
                return Ok(props);
            }
            let value = self.value(depth)?;
            props.push((key, value));
        }
    }
}

/// Why a value cannot be written as AMF0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Amf0EncodeError {
    /// A string, key, class name or array longer than its length field
    /// can say (65535 bytes for a string, key or class name; 2^32 - 1 for a
    /// long string, XML document or array).
    TooLong { len: usize },
}

impl fmt::Display for Amf0EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amf0EncodeError::TooLong { len } => {
                write!(f, "{len} is too long for an AMF0 length field")
            }
        }
    }
}

impl std::error::Error for Amf0EncodeError {}

/// Encodes `values` one after another, as the guard's replies and the
/// tests' clients send them. Object, ECMA array and typed object keys are
/// written in the order given, duplicates included, so `read_all` gives
/// back exactly what was encoded. Nesting is the caller's to bound: the
/// writer recurses once per level.
pub fn encode(values: &[Amf0Value]) -> Result<Vec<u8>, Amf0EncodeError> {
    let mut out = Vec::new();
    for v in values {
        write_value(&mut out, v)?;
    }
    Ok(out)
}

fn write_value(out: &mut Vec<u8>, v: &Amf0Value) -> Result<(), Amf0EncodeError> {
    match v {
        Amf0Value::Number(n) => {
            out.push(marker::NUMBER);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Amf0Value::Boolean(b) => out.extend_from_slice(&[marker::BOOLEAN, u8::from(*b)]),
        Amf0Value::String(s) => {
            out.push(marker::STRING);
            write_short(out, s)?;
        }
        Amf0Value::Object(p) => {
            out.push(marker::OBJECT);
            write_properties(out, p)?;
        }
        Amf0Value::Null => out.push(marker::NULL),
        Amf0Value::Undefined => out.push(marker::UNDEFINED),
        Amf0Value::Reference(r) => {
            out.push(marker::REFERENCE);
            out.extend_from_slice(&r.to_be_bytes());
        }
        Amf0Value::EcmaArray(p) => {
            out.push(marker::ECMA_ARRAY);
            out.extend_from_slice(&long_length(p.len())?.to_be_bytes());
            write_properties(out, p)?;
        }
        Amf0Value::StrictArray(items) => {
            out.push(marker::STRICT_ARRAY);
            out.extend_from_slice(&long_length(items.len())?.to_be_bytes());
            for item in items {
                write_value(out, item)?;
            }
        }
        Amf0Value::Date { millis, timezone } => {
            out.push(marker::DATE);
            out.extend_from_slice(&millis.to_be_bytes());
            out.extend_from_slice(&timezone.to_be_bytes());
        }
        Amf0Value::LongString(s) => {
            out.push(marker::LONG_STRING);
            write_long(out, s)?;
        }
        Amf0Value::Unsupported => out.push(marker::UNSUPPORTED),
        Amf0Value::XmlDocument(s) => {
            out.push(marker::XML_DOCUMENT);
            write_long(out, s)?;
        }
        Amf0Value::TypedObject { class, properties } => {
            out.push(marker::TYPED_OBJECT);
            write_short(out, class)?;
            write_properties(out, properties)?;
        }
    }
    Ok(())
}

fn long_length(len: usize) -> Result<u32, Amf0EncodeError> {
    u32::try_from(len).map_err(|_| Amf0EncodeError::TooLong { len })
}

fn write_short(out: &mut Vec<u8>, s: &str) -> Result<(), Amf0EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| Amf0EncodeError::TooLong { len: s.len() })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn write_long(out: &mut Vec<u8>, s: &str) -> Result<(), Amf0EncodeError> {
    out.extend_from_slice(&long_length(s.len())?.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Key/value pairs in order, then the empty key and the end marker.
fn write_properties(
    out: &mut Vec<u8>,
    properties: &[(String, Amf0Value)],
) -> Result<(), Amf0EncodeError> {
    for (key, value) in properties {
        write_short(out, key)?;
        write_value(out, value)?;
    }
    out.extend_from_slice(&[0, 0, marker::OBJECT_END]);
    Ok(())
}

/// `depth` strict arrays, each holding the next, around a null: the
/// stack-overflow probe the tests and the fuzz corpus send.
pub fn nested_strict_arrays(depth: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth.saturating_mul(5).saturating_add(1));
    for _ in 0..depth {
        out.extend_from_slice(&[marker::STRICT_ARRAY, 0, 0, 0, 1]);
    }
    out.push(marker::NULL);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: &str) -> Amf0Value {
        Amf0Value::String(v.to_string())
    }

    #[test]
    fn reads_a_connect_command_keeping_key_order() {
        let obj = Amf0Value::Object(vec![
            ("app".into(), s("live")),
            ("tcUrl".into(), s("rtmp://h/live")),
            ("app".into(), s("second")),
        ]);
        let values = vec![s("connect"), Amf0Value::Number(1.0), obj.clone()];
        let got = read_all(&encode(&values).unwrap(), 32).unwrap();
        assert_eq!(got, values);
        assert_eq!(got[2].get("app"), Some(&s("live")));
    }

    #[test]
    fn truncated_string_is_an_error_not_padding() {
        let mut bytes = vec![2, 0, 10];
        bytes.extend_from_slice(b"abc");
        assert_eq!(
            read_all(&bytes, 32),
            Err(Amf0Error::Truncated { offset: 3 })
        );
    }

    #[test]
    fn unknown_and_reserved_markers_are_errors() {
        for m in [4u8, 9, 14, 17, 0x42] {
            assert_eq!(
                read_all(&[m], 32),
                Err(Amf0Error::UnknownMarker {
                    marker: m,
                    offset: 0
                })
            );
        }
    }

    #[test]
    fn long_lengths_run_past_the_message() {
        assert!(matches!(
            read_all(&[12, 0xFF, 0xFF, 0xFF, 0xFF, b'a'], 32),
            Err(Amf0Error::Truncated { .. })
        ));
        assert!(matches!(
            read_all(&[10, 0xFF, 0xFF, 0xFF, 0xFF, 5], 32),
            Err(Amf0Error::Truncated { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused_without_touching_the_stack() {
        let bytes = nested_strict_arrays(12_000);
        assert_eq!(read_all(&bytes, 32), Err(Amf0Error::TooDeep { limit: 32 }));
        assert!(read_all(&nested_strict_arrays(32), 32).is_ok());
        assert!(read_all(&nested_strict_arrays(33), 32).is_err());
    }

    #[test]
    fn object_without_end_marker_is_truncated() {
        let mut bytes = vec![3];
        bytes.extend_from_slice(&[0, 1, b'a', 5]);
        assert!(matches!(
            read_all(&bytes, 32),
            Err(Amf0Error::Truncated { .. })
        ));
    }

    #[test]
    fn encodes_object_keys_in_the_order_given() {
        let obj = Amf0Value::Object(vec![
            ("b".into(), Amf0Value::Boolean(true)),
            ("a".into(), Amf0Value::Null),
        ]);
        assert_eq!(
            encode(&[obj]).unwrap(),
            [3, 0, 1, b'b', 1, 1, 0, 1, b'a', 5, 0, 0, 9]
        );
        assert_eq!(
            encode(&[Amf0Value::EcmaArray(vec![(
                "k".into(),
                Amf0Value::Undefined
            )])])
            .unwrap(),
            [8, 0, 0, 0, 1, 0, 1, b'k', 6, 0, 0, 9]
        );
    }

    #[test]
    fn text_longer_than_its_length_field_is_an_error() {
        let long = "x".repeat(65_536);
        assert!(encode(&[Amf0Value::String("x".repeat(65_535))]).is_ok());
        assert_eq!(
            encode(&[Amf0Value::String(long.clone())]),
            Err(Amf0EncodeError::TooLong { len: 65_536 })
        );
        assert_eq!(
            encode(&[Amf0Value::Object(vec![(long.clone(), Amf0Value::Null)])]),
            Err(Amf0EncodeError::TooLong { len: 65_536 })
        );
        assert!(encode(&[Amf0Value::LongString(long)]).is_ok());
    }

    /// Every kind of value the reader returns, nested at most 4 deep (the
    /// reader allows 32), with any text (keys may be empty: a key is only
    /// the end of an object when the end marker follows it).
    fn value_strategy() -> impl Strategy<Value = Amf0Value> {
        let leaf = prop_oneof![
            any::<f64>()
                .prop_filter("NaN != NaN", |f| !f.is_nan())
                .prop_map(Amf0Value::Number),
            any::<bool>().prop_map(Amf0Value::Boolean),
            ".{0,12}".prop_map(Amf0Value::String),
            Just(Amf0Value::Null),
            Just(Amf0Value::Undefined),
            any::<u16>().prop_map(Amf0Value::Reference),
            (
                any::<f64>().prop_filter("NaN != NaN", |f| !f.is_nan()),
                any::<i16>()
            )
                .prop_map(|(millis, timezone)| Amf0Value::Date { millis, timezone }),
            ".{0,5}".prop_map(Amf0Value::LongString),
            Just(Amf0Value::Unsupported),
            ".{0,5}".prop_map(Amf0Value::XmlDocument),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            let props = prop::collection::vec((".{0,6}", inner.clone()), 0..6);
            prop_oneof![
                props.clone().prop_map(Amf0Value::Object),
                props.clone().prop_map(Amf0Value::EcmaArray),
                prop::collection::vec(inner, 0..6).prop_map(Amf0Value::StrictArray),
                (".{0,6}", props)
                    .prop_map(|(class, properties)| Amf0Value::TypedObject { class, properties }),
            ]
        })
    }

    proptest! {
        #[test]
        fn encoded_values_read_back_the_same(values in prop::collection::vec(value_strategy(), 0..6)) {
            prop_assert_eq!(read_all(&encode(&values).unwrap(), 32).unwrap(), values);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = read_all(&data, 32);
        }
    }
}
