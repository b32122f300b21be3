//! Optional fields of a BAM record (SAMv1 §4.2.4), parsed lazily from raw bytes.

use std::fmt;

/// Why the optional fields of a record cannot be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagError {
    /// A field's tag, type or value runs past the end of the record.
    Truncated { offset: usize },
    /// A field has a type code the spec does not define.
    InvalidType { offset: usize, code: u8 },
    /// A `Z` or `H` string has no NUL terminator.
    MissingNul { offset: usize },
}

impl fmt::Display for TagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { offset } => {
                write!(
                    f,
                    "optional field at byte {offset} of the tag data is truncated"
                )
            }
            Self::InvalidType { offset, code } => write!(
                f,
                "optional field at byte {offset} of the tag data has invalid type {:?}",
                char::from(*code)
            ),
            Self::MissingNul { offset } => write!(
                f,
                "string field at byte {offset} of the tag data is not NUL-terminated"
            ),
        }
    }
}

impl std::error::Error for TagError {}

/// One optional field: its two-character tag and typed value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tag<'a> {
    pub name: [u8; 2],
    pub value: TagValue<'a>,
}

/// A typed optional field value, borrowing strings and arrays from the record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TagValue<'a> {
    /// `A`: one printable character.
    Character(u8),
    /// `c`, `C`, `s`, `S`, `i`, `I`: an integer, widened, with its type code kept.
    Integer { code: u8, value: i64 },
    /// `f`: a single-precision float.
    Float(f32),
    /// `Z`: a string, without its NUL.
    String(&'a [u8]),
    /// `H`: a hex string, without its NUL.
    Hex(&'a [u8]),
    /// `B`: a typed array.
    Array(TagArray<'a>),
}

impl TagValue<'_> {
    /// The SAM type character of this value (`A`, `i`, `f`, `Z`, `H` or `B`).
    #[inline]
    pub fn sam_type(&self) -> u8 {
        match self {
            Self::Character(_) => b'A',
            Self::Integer { .. } => b'i',
            Self::Float(_) => b'f',
            Self::String(_) => b'Z',
            Self::Hex(_) => b'H',
            Self::Array(_) => b'B',
        }
    }
}

/// A `B` array: its element type code and little-endian elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TagArray<'a> {
    subtype: u8,
    len: usize,
    data: &'a [u8],
}

impl<'a> TagArray<'a> {
    /// Element type code: one of `cCsSiIf`.
    pub fn subtype(&self) -> u8 {
        self.subtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether elements are floats (`f`); otherwise they are integers.
    pub fn is_float(&self) -> bool {
        self.subtype == b'f'
    }

    /// The elements as integers; empty for a float array.
    pub fn integers(&self) -> impl Iterator<Item = i64> + 'a {
        let subtype = self.subtype;
        let data: &'a [u8] = if self.is_float() { &[] } else { self.data };
        data.chunks_exact(element_width(subtype))
            .map(move |chunk| integer(subtype, chunk))
    }

    /// The elements as floats; empty for an integer array.
    pub fn floats(&self) -> impl Iterator<Item = f32> + 'a {
        let data: &'a [u8] = if self.is_float() { self.data } else { &[] };
        data.chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
    }
}

/// Iterator over the optional fields of a record, in file order.
///
/// Parsing stops at the first malformed field, which is returned as an error.
#[derive(Clone, Debug)]
pub struct Tags<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Tags<'a> {
    /// Iterates over raw optional-field bytes.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, offset: 0 }
    }

    /// Finds the first field with the given tag.
    ///
    /// # Errors
    ///
    /// Returns a [`TagError`] when a field before it is malformed.
    pub fn find(self, name: [u8; 2]) -> Result<Option<TagValue<'a>>, TagError> {
        for tag in self {
            let tag = tag?;
            if tag.name == name {
                return Ok(Some(tag.value));
            }
        }
        Ok(None)
    }

    // Inlined across crates: the engine iterates every record's fields, and returning the
    // `Result<Tag>` through memory cost as much as parsing it.
    #[inline(always)]
    fn parse_next(&mut self) -> Result<Tag<'a>, TagError> {
        let start = self.offset;
        let truncated = TagError::Truncated { offset: start };
        let header = self.data.get(start..start + 3).ok_or(truncated)?;
        let name = [header[0], header[1]];
        let code = header[2];
        let body = &self.data[start + 3..];

        let (value, len) = match code {
            b'A' => (TagValue::Character(*body.first().ok_or(truncated)?), 1),
            b'c' | b'C' | b's' | b'S' | b'i' | b'I' => {
                let width = element_width(code);
                let bytes = body.get(..width).ok_or(truncated)?;
                let value = integer(code, bytes);
                (TagValue::Integer { code, value }, width)
            }
            b'f' => {
                let b = body.get(..4).ok_or(truncated)?;
                (
                    TagValue::Float(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    4,
                )
            }
            b'Z' | b'H' => {
                let end = find_nul(body).ok_or(TagError::MissingNul { offset: start })?;
                let s = &body[..end];
                let value = if code == b'Z' {
                    TagValue::String(s)
                } else {
                    TagValue::Hex(s)
                };
                (value, end + 1)
            }
            b'B' => {
                let head = body.get(..5).ok_or(truncated)?;
                let subtype = head[0];
                if !matches!(subtype, b'c' | b'C' | b's' | b'S' | b'i' | b'I' | b'f') {
                    return Err(TagError::InvalidType {
                        offset: start,
                        code: subtype,
                    });
                }
                let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
                let byte_len = len.checked_mul(element_width(subtype)).ok_or(truncated)?;
                let data = body.get(5..5 + byte_len).ok_or(truncated)?;
                (
                    TagValue::Array(TagArray { subtype, len, data }),
                    5 + byte_len,
                )
            }
            _ => {
                return Err(TagError::InvalidType {
                    offset: start,
                    code,
                })
            }
        };

        self.offset = start + 3 + len;
        Ok(Tag { name, value })
    }
}

impl<'a> Iterator for Tags<'a> {
    type Item = Result<Tag<'a>, TagError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.data.len() {
            return None;
        }
        let tag = self.parse_next();
        if tag.is_err() {
            // Stop after the first error: later offsets are meaningless.
            self.offset = self.data.len();
        }
        Some(tag)
    }
}

/// The index of the first NUL, eight bytes at a time: `Z` strings such as cell barcodes and
/// their qualities make this search a hot loop, and they are too short for `memchr`'s setup to
/// pay off.
#[inline]
fn find_nul(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        // Nonzero exactly when some byte is zero; the lowest flagged byte is the first zero.
        let zeros = word.wrapping_sub(ONES) & !word & HIGHS;
        if zeros != 0 {
            return Some(offset + zeros.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == 0)
        .map(|i| offset + i)
}

fn element_width(code: u8) -> usize {
    match code {
        b'c' | b'C' => 1,
        b's' | b'S' => 2,
        _ => 4,
    }
}

fn integer(code: u8, b: &[u8]) -> i64 {
    match code {
        b'c' => i64::from(b[0] as i8),
        b'C' => i64::from(b[0]),
        b's' => i64::from(i16::from_le_bytes([b[0], b[1]])),
        b'S' => i64::from(u16::from_le_bytes([b[0], b[1]])),
        b'i' => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        _ => i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(data: &[u8]) -> Vec<Result<Tag<'_>, TagError>> {
        Tags::new(data).collect()
    }

    #[test]
    fn parses_every_type() {
        let mut data = Vec::new();
        data.extend_from_slice(b"XAAx");
        data.extend_from_slice(b"XCc\xff");
        data.extend_from_slice(b"XSS\xff\xff");
        data.extend_from_slice(b"XII\xff\xff\xff\xff");
        data.extend_from_slice(b"XFf");
        data.extend_from_slice(&1.5f32.to_le_bytes());
        data.extend_from_slice(b"XZZab\0");
        data.extend_from_slice(b"XHH1A\0");
        data.extend_from_slice(b"XBBs\x02\0\0\0\xff\xff\x02\0");

        let parsed: Vec<_> = tags(&data).into_iter().map(Result::unwrap).collect();
        let values: Vec<_> = parsed.iter().map(|t| t.value).collect();
        assert_eq!(parsed[0].name, *b"XA");
        assert_eq!(values[0], TagValue::Character(b'x'));
        assert_eq!(
            values[1],
            TagValue::Integer {
                code: b'c',
                value: -1
            }
        );
        assert_eq!(
            values[2],
            TagValue::Integer {
                code: b'S',
                value: 65535
            }
        );
        assert_eq!(
            values[3],
            TagValue::Integer {
                code: b'I',
                value: 4294967295
            }
        );
        assert_eq!(values[4], TagValue::Float(1.5));
        assert_eq!(values[5], TagValue::String(b"ab"));
        assert_eq!(values[6], TagValue::Hex(b"1A"));
        let TagValue::Array(array) = values[7] else {
            panic!("not an array")
        };
        assert_eq!(array.subtype(), b's');
        assert_eq!(array.integers().collect::<Vec<_>>(), [-1, 2]);
        assert_eq!(array.floats().count(), 0);
    }

    #[test]
    fn finds_the_first_nul_at_every_position() {
        for len in 0..40 {
            for nul in 0..len {
                let mut bytes = vec![0x80u8 | 0x41; len];
                bytes[nul] = 0;
                if nul + 1 < len {
                    bytes[nul + 1] = 0;
                }
                assert_eq!(find_nul(&bytes), Some(nul), "len {len}, NUL at {nul}");
            }
            assert_eq!(find_nul(&vec![1u8; len]), None, "len {len} without NUL");
        }
    }

    #[test]
    fn reports_malformed_fields_once() {
        assert_eq!(tags(b"XZZab"), [Err(TagError::MissingNul { offset: 0 })]);
        assert_eq!(
            tags(b"XAAxXIi\x01"),
            [
                Ok(Tag {
                    name: *b"XA",
                    value: TagValue::Character(b'x')
                }),
                Err(TagError::Truncated { offset: 4 })
            ]
        );
        assert_eq!(
            tags(b"XQq\x01"),
            [Err(TagError::InvalidType {
                offset: 0,
                code: b'q'
            })]
        );
        assert_eq!(
            tags(b"XBBi\xff\xff\xff\xff"),
            [Err(TagError::Truncated { offset: 0 })]
        );
        assert_eq!(
            tags(b"XBBq\0\0\0\0"),
            [Err(TagError::InvalidType {
                offset: 0,
                code: b'q'
            })]
        );
    }

    #[test]
    fn find_returns_first_match() {
        let value = Tags::new(b"NMC\x02NMC\x03").find(*b"NM").unwrap();
        assert_eq!(
            value,
            Some(TagValue::Integer {
                code: b'C',
                value: 2
            })
        );
        assert_eq!(Tags::new(b"NMC\x02").find(*b"XX").unwrap(), None);
    }
}
