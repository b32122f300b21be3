//! Field values as `samtools view` prints them (htslib `sam_format1`), appended to byte buffers.
//!
//! Everything here appends to a caller-owned `Vec<u8>`, so formatting a record allocates nothing
//! once the column buffers have grown to size.

use std::io::Write;

use bamflow_plugin_api::{TagArray, TagValue};

/// CIGAR operation characters by op code (htslib's `BAM_CIGAR_STR`, padded for codes 10–15).
const CIGAR_OPS: &[u8; 16] = b"MIDNSHP=XB??????";

/// Base characters by 4-bit code (SAMv1 §4.2.3).
const BASES: &[u8; 16] = b"=ACMGRSVTWYHKDBN";

/// Both bases of a packed byte, so decoding takes one lookup per two bases.
static BASE_PAIRS: [[u8; 2]; 256] = {
    let mut table = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [BASES[i >> 4], BASES[i & 0xf]];
        i += 1;
    }
    table
};

/// Whether a CIGAR op consumes the reference (M, D, N, =, X).
pub fn consumes_reference(op: u8) -> bool {
    matches!(op, 0 | 2 | 3 | 7 | 8)
}

/// Appends a CIGAR as text, e.g. `5S70M1I74M`.
pub fn push_cigar(out: &mut Vec<u8>, ops: impl Iterator<Item = (u8, u32)>) {
    let mut digits = itoa::Buffer::new();
    for (op, len) in ops {
        out.extend_from_slice(digits.format(len).as_bytes());
        out.push(CIGAR_OPS[usize::from(op & 0xf)]);
    }
}

/// Appends `len` bases from 4-bit packed `packed`.
pub fn push_sequence(out: &mut Vec<u8>, packed: &[u8], len: usize) {
    // Sizing first and writing pairs into the slice keeps capacity checks out of the loop,
    // which was a third of the decode time on short reads.
    let start = out.len();
    out.resize(start + packed.len() * 2, 0);
    let text = &mut out[start..];
    let unpacked = unpack_wide(text, packed);
    for (pair, &byte) in text[2 * unpacked..]
        .chunks_exact_mut(2)
        .zip(&packed[unpacked..])
    {
        pair.copy_from_slice(&BASE_PAIRS[usize::from(byte)]);
    }
    // An odd length leaves a padding base in the last byte's low nibble.
    out.truncate(start + len.min(packed.len() * 2));
}

/// Unpacks the leading 16-byte blocks of `packed` into `text` sixteen at a time, where the CPU
/// can; returns how many packed bytes it did.
///
/// A table lookup per packed byte was 2.2% of a `scan` of short reads (perf); one byte shuffle
/// looks up sixteen.
#[cfg(target_arch = "x86_64")]
fn unpack_wide(text: &mut [u8], packed: &[u8]) -> usize {
    if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU has SSSE3, checked just above.
        unsafe { unpack_ssse3(text, packed) }
    } else {
        0
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn unpack_wide(_text: &mut [u8], _packed: &[u8]) -> usize {
    0
}

/// `text` holds two bytes for every byte of `packed`.
///
/// # Safety
///
/// The CPU must have SSSE3.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn unpack_ssse3(text: &mut [u8], packed: &[u8]) -> usize {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_loadu_si128, _mm_set1_epi8, _mm_shuffle_epi8, _mm_srli_epi16,
        _mm_storeu_si128, _mm_unpackhi_epi8, _mm_unpacklo_epi8,
    };

    // SAFETY: BASES is 16 bytes, an unaligned load's width.
    let bases = unsafe { _mm_loadu_si128(BASES.as_ptr().cast::<__m128i>()) };
    let low_nibble = _mm_set1_epi8(0x0f);
    let blocks = packed.chunks_exact(16).zip(text.chunks_exact_mut(32));
    let mut done = 0;
    for (from, to) in blocks {
        // SAFETY: `from` is 16 bytes.
        let bytes = unsafe { _mm_loadu_si128(from.as_ptr().cast::<__m128i>()) };
        // The first base of a byte is its high nibble.
        let first = _mm_shuffle_epi8(bases, _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibble));
        let second = _mm_shuffle_epi8(bases, _mm_and_si128(bytes, low_nibble));
        let to = to.as_mut_ptr().cast::<__m128i>();
        // SAFETY: `to` is 32 bytes: two unaligned stores of 16.
        unsafe {
            _mm_storeu_si128(to, _mm_unpacklo_epi8(first, second));
            _mm_storeu_si128(to.add(1), _mm_unpackhi_epi8(first, second));
        }
        done += 16;
    }
    done
}

/// Appends Phred qualities as Phred+33 text, or returns the first score above 93, which has
/// no SAM text (it would leave ASCII).
///
/// Both the check and the shift run over whole slices so they vectorise; a byte-at-a-time
/// search for a bad score was a quarter of the decode time on short reads.
pub fn push_quality(out: &mut Vec<u8>, scores: &[u8]) -> Result<(), u8> {
    let highest = scores.iter().fold(0, |max, &q| max.max(q));
    if highest > 93 {
        return Err(scores.iter().copied().find(|&q| q > 93).unwrap_or(highest));
    }
    let start = out.len();
    out.extend_from_slice(scores);
    for q in &mut out[start..] {
        *q += 33;
    }
    Ok(())
}

/// Appends one optional field as `TG:T:value`.
pub fn push_tag(out: &mut Vec<u8>, name: [u8; 2], value: &TagValue<'_>) {
    // `NM:i:` in one write: records carry many short fields, and a push per byte showed.
    out.extend_from_slice(&[name[0], name[1], b':', value.sam_type(), b':']);
    match *value {
        TagValue::Character(c) => out.push(c),
        TagValue::Integer { value, .. } => {
            out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
        TagValue::Float(value) => push_float(out, value),
        TagValue::String(s) | TagValue::Hex(s) => out.extend_from_slice(s),
        TagValue::Array(array) => push_array(out, &array),
    }
}

fn push_array(out: &mut Vec<u8>, array: &TagArray<'_>) {
    out.push(array.subtype());
    if array.is_float() {
        for value in array.floats() {
            out.push(b',');
            push_float(out, value);
        }
    } else {
        let mut digits = itoa::Buffer::new();
        for value in array.integers() {
            out.push(b',');
            out.extend_from_slice(digits.format(value).as_bytes());
        }
    }
}

/// Appends a float as C's `printf("%g")` does (six significant digits, trailing zeros removed,
/// exponent form outside 1e-4..1e6), which is what samtools prints for `f` values.
pub fn push_float(out: &mut Vec<u8>, value: f32) {
    let value = f64::from(value);
    if value.is_nan() {
        out.extend_from_slice(if value.is_sign_negative() {
            b"-nan"
        } else {
            b"nan"
        });
        return;
    }
    if value.is_infinite() {
        out.extend_from_slice(if value < 0.0 { b"-inf" } else { b"inf" });
        return;
    }
    if value == 0.0 {
        out.extend_from_slice(if value.is_sign_negative() {
            b"-0"
        } else {
            b"0"
        });
        return;
    }

    if push_fixed(out, value as f32) {
        return;
    }
    // Round to six significant digits first: the exponent after rounding decides the form.
    let mut scientific = [0u8; 32];
    let len = format_into(&mut scientific, format_args!("{value:.5e}"));
    let scientific = &scientific[..len];
    let e = scientific.iter().position(|&b| b == b'e').unwrap_or(len);
    let exponent: i32 = std::str::from_utf8(&scientific[e + 1..])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);

    if (-4..6).contains(&exponent) {
        let precision = (5 - exponent) as usize;
        let start = out.len();
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{value:.precision$}");
        trim_fraction(out, start);
    } else {
        let start = out.len();
        out.extend_from_slice(&scientific[..e]);
        trim_fraction(out, start);
        out.push(b'e');
        out.push(if exponent < 0 { b'-' } else { b'+' });
        let magnitude = exponent.unsigned_abs();
        if magnitude < 10 {
            out.push(b'0');
        }
        out.extend_from_slice(itoa::Buffer::new().format(magnitude).as_bytes());
    }
}

/// `%g` of a float whose six significant digits print without an exponent (0.0001 up to
/// 999999.5), in integer arithmetic; false, with nothing written, for any other value.
///
/// One float tag per record (minimap2's `de:f`) made `core::fmt`'s exact float formatting 3.2%
/// of a short-read conversion's CPU. A normal `f32` is `m / 2^s` with `m` under 2^24, so its
/// six digits at decimal exponent `x` are `m * 10^(5-x) / 2^s`, rounded half to even as glibc's
/// printf rounds the exact value; with `x` down to -6 that product stays under 2^61.
fn push_fixed(out: &mut Vec<u8>, value: f32) -> bool {
    // 10^(5-x) for decimal exponents x from 5 down to -6: -5 and -6 only to find that a value
    // rounds to an exponent below fixed notation's -4.
    const POWERS: [u64; 12] = [
        1,
        10,
        100,
        1_000,
        10_000,
        100_000,
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
        10_000_000_000,
        100_000_000_000,
    ];
    let bits = value.to_bits();
    let biased = (bits >> 23) & 0xff;
    // Subnormal, infinite and NaN values, and those from 2^24 up, are never printed fixed.
    if biased == 0 || biased >= 150 {
        return false;
    }
    let mantissa = u64::from((bits & 0x7f_ffff) | 0x80_0000);
    let shift = 150 - biased;
    if shift > 63 {
        return false; // under 2^-40: far below 0.0001
    }
    let digits_at = |exponent: i32| -> u64 {
        let scaled = mantissa * POWERS[(5 - exponent) as usize];
        let (quotient, rest) = (scaled >> shift, scaled & ((1 << shift) - 1));
        let half = 1 << (shift - 1);
        quotient + u64::from(rest > half || rest == half && quotient & 1 == 1)
    };
    // The decimal exponent of the rounded value: log10's estimate is at most one off.
    let estimate = f64::from(value.abs()).log10().floor() as i32;
    let Some((exponent, digits)) = (estimate - 1..=estimate + 1)
        .filter(|exponent| (-6..=5).contains(exponent))
        .map(|exponent| (exponent, digits_at(exponent)))
        .find(|(_, digits)| (100_000..1_000_000).contains(digits))
        .filter(|(exponent, _)| (-4..=5).contains(exponent))
    else {
        return false;
    };
    if value < 0.0 {
        out.push(b'-');
    }
    let mut text = itoa::Buffer::new();
    let text = text.format(digits).as_bytes();
    let start = out.len();
    if exponent >= 0 {
        let (whole, fraction) = text.split_at(exponent as usize + 1);
        out.extend_from_slice(whole);
        out.push(b'.');
        out.extend_from_slice(fraction);
    } else {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-exponent - 1) as usize));
        out.extend_from_slice(text);
    }
    trim_fraction(out, start);
    true
}

/// Removes trailing zeros after a decimal point, and the point itself if nothing follows.
fn trim_fraction(out: &mut Vec<u8>, start: usize) {
    if !out[start..].contains(&b'.') {
        return;
    }
    while out.last() == Some(&b'0') {
        out.pop();
    }
    if out.last() == Some(&b'.') {
        out.pop();
    }
}

fn format_into(buf: &mut [u8], args: std::fmt::Arguments<'_>) -> usize {
    let capacity = buf.len();
    let mut cursor = &mut buf[..];
    // 32 bytes hold any `{:.5e}` of an f64; a failure would only shorten the output.
    let _ = cursor.write_fmt(args);
    capacity - cursor.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_printf_g() {
        let t = |value: f32, expected: &str| {
            let mut out = Vec::new();
            push_float(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{value:e}");
        };
        // Expected values are C's printf("%g", (double)value).
        t(1.0, "1");
        t(-2.5, "-2.5");
        t(0.1, "0.1");
        t(1.0 / 3.0, "0.333333");
        t(123456.0, "123456");
        t(1234567.0, "1.23457e+06");
        t(999999.5, "1e+06");
        t(0.0001, "0.0001");
        t(0.00001234, "1.234e-05");
        t(3.4028235e38, "3.40282e+38");
        t(1e-40, "9.99995e-41");
        t(100.0, "100");
        t(0.0, "0");
        t(-0.0, "-0");
        t(f32::INFINITY, "inf");
        t(f32::NEG_INFINITY, "-inf");
        t(f32::NAN, "nan");
    }

    /// C's `printf("%g", (double)value)`, from this system's C library.
    fn printf_g(value: f32) -> String {
        let mut buffer = [0u8; 64];
        // SAFETY: the buffer's length bounds the write; the format takes one double.
        let len = unsafe {
            libc::snprintf(
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                c"%g".as_ptr(),
                f64::from(value),
            )
        };
        String::from_utf8_lossy(&buffer[..len as usize]).into_owned()
    }

    #[test]
    fn floats_print_like_the_c_librarys_printf_g() {
        let ours = |value: f32| {
            let mut out = Vec::new();
            push_float(&mut out, value);
            String::from_utf8(out).unwrap()
        };
        // Every 997th bit pattern (all signs, exponents and both ways of printing), and values
        // at the edges of fixed notation and exact ties at the sixth digit. (Every f32 from
        // 2^-19 to 2^24, both signs, was compared once when the fixed path was written.)
        let edges = [
            0.0001,
            0.00009999999,
            0.0001f32.next_down(),
            999999.5,
            999999.44,
            999999.56,
            100000.5,
            12345.25,
            12345.75,
            1.0000005,
            9.999995,
            0.5,
            2.5e-4,
            f32::from_bits(0x3880_0000), // 2^-14
            16777215.0,
            // Six digits at exponent -5 that round to 0.0001 at -4: still exponent form.
            9.99995e-5,
            9.9999525e-5,
        ];
        let sweep = (0..=u32::MAX).step_by(997).map(f32::from_bits);
        for value in sweep.chain(edges).chain(edges.map(|v| -v)) {
            assert_eq!(
                ours(value),
                printf_g(value),
                "{value:e} ({:#x})",
                value.to_bits()
            );
        }
    }

    #[test]
    fn qualities_shift_by_33_and_refuse_scores_above_93() {
        let mut out = b">".to_vec();
        assert_eq!(push_quality(&mut out, &[0, 40, 93]), Ok(()));
        assert_eq!(out, b">!I~");
        let long: Vec<u8> = (0..200).map(|i| (i % 94) as u8).collect();
        out.clear();
        assert_eq!(push_quality(&mut out, &long), Ok(()));
        assert!(out.iter().zip(&long).all(|(&c, &q)| c == q + 33));
        out.clear();
        assert_eq!(push_quality(&mut out, &[30, 94, 120]), Err(94));
        assert!(out.is_empty());
    }

    #[test]
    fn sequences_decode_both_nibbles() {
        let t = |packed: &[u8], len, expected: &str| {
            let mut out = b">".to_vec();
            push_sequence(&mut out, packed, len);
            assert_eq!(out, format!(">{expected}").as_bytes());
        };
        t(&[0x12, 0x48], 4, "ACGT");
        t(&[0x12, 0x40], 3, "ACG");
        t(&[0x0f, 0x35], 4, "=NMR");
        t(&[], 0, "");
    }

    #[test]
    fn long_sequences_decode_like_one_byte_at_a_time() {
        // Every packed byte, in blocks the wide path takes and a tail it leaves, odd length.
        let packed: Vec<u8> = (0..=255u8).chain(0..37).collect();
        let len = packed.len() * 2 - 1;
        let expected: Vec<u8> = packed
            .iter()
            .flat_map(|&b| [BASES[usize::from(b >> 4)], BASES[usize::from(b & 0xf)]])
            .take(len)
            .collect();
        let mut out = b">".to_vec();
        push_sequence(&mut out, &packed, len);
        assert_eq!(&out[1..], &expected[..]);
    }

    #[test]
    fn cigar_ops_print_as_samtools() {
        let mut out = Vec::new();
        push_cigar(
            &mut out,
            [(4, 5), (0, 70), (1, 1), (7, 3), (8, 1), (9, 2)].into_iter(),
        );
        assert_eq!(out, b"5S70M1I3=1X2B");
    }
}
