//! Sample values as the exposition writes them: integers in decimal, floats
//! as the shortest text that reads back as them (what dtoa writes).
//!
//! Digits are written straight into the body. Formatting into a buffer of
//! its own and copying that out, as `itoa` does, costs a `memcpy` call per
//! value whose loads wait on the digits just stored (store forwarding fails
//! for byte stores read back as one word), which is most of a value's cost
//! in a render where only values change. `itoa` and `dtoa` remain the
//! reference the tests compare with, and dtoa writes the rare floats the
//! fast paths do not cover.

/// A sample value.
#[derive(Clone, Copy)]
pub(super) enum Value {
    /// A gauge or a float counter.
    F64(f64),
    /// An integer.
    U64(u64),
}

/// A sample's value and the newline that ends it.
#[inline]
pub(super) fn write_value(out: &mut Vec<u8>, value: Value) {
    match value {
        Value::F64(v) => write_f64(out, v),
        Value::U64(v) => write_u64(out, v),
    }
    out.push(b'\n');
}

/// Writes `v` as dtoa writes it (the shortest text that reads back as `v`),
/// taking a fast path for the values GPUs mostly have.
pub(super) fn write_f64(out: &mut Vec<u8>, v: f64) {
    // Whole numbers: the integer plus ".0", several times faster than dtoa.
    // (The cast and compare are two instructions; `fract` is a call.)
    if v.abs() < 1e15 && (v as i64) as f64 == v {
        write_i64(out, v as i64);
        out.extend_from_slice(b".0");
        return;
    }
    // Up to three decimals (watts, percents, joules from millijoules): the
    // exact decimal is the shortest text for `v`, since below 1e12 doubles
    // lie closer together than half a thousandth, so no shorter decimal
    // reads back as `v`.
    let thousandths = v * 1000.0;
    // (Whole below 1e15, so the cast is exact; `round` is a call.)
    if v.abs() < 1e12 && thousandths == (thousandths as i64) as f64 && thousandths / 1000.0 == v {
        let n = thousandths as i64;
        if n < 0 {
            out.push(b'-');
        }
        let n = n.unsigned_abs();
        write_u64(out, n / 1000);
        let fraction = (n % 1000) as u32;
        let [hundredths, tenths, ones] = [fraction / 100, fraction / 10 % 10, fraction % 10];
        let len = if ones != 0 {
            4
        } else if tenths != 0 {
            3
        } else {
            2
        };
        // The point and three digits as one word, written whole and cut: a
        // fixed-size store, where bytes stored one by one and read back as
        // a word would stall the read.
        let word = u32::from(b'.')
            | (u32::from(b'0') + hundredths) << 8
            | (u32::from(b'0') + tenths) << 16
            | (u32::from(b'0') + ones) << 24;
        let at = out.len();
        out.extend_from_slice(&word.to_le_bytes());
        out.truncate(at + len);
        return;
    }
    out.extend_from_slice(dtoa::Buffer::new().format(v).as_bytes());
}

fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

/// Writes `n` in decimal: eight digits at a time, each eight worked out
/// together in one word and stored as one word.
#[inline]
pub(super) fn write_u64(out: &mut Vec<u8>, n: u64) {
    const E8: u64 = 100_000_000;
    // Flags, percents, temperatures, small counts: one or two digits.
    if n < 10 {
        out.push(b'0' + n as u8);
    } else if n < 100 {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
    } else if n < E8 {
        put_leading(out, n as u32);
    } else if n < E8 * E8 {
        put_leading(out, (n / E8) as u32);
        put_eight(out, (n % E8) as u32);
    } else {
        put_leading(out, (n / (E8 * E8)) as u32);
        put_eight(out, (n / E8 % E8) as u32);
        put_eight(out, (n % E8) as u32);
    }
}

/// Writes `n` (below 10^8) without leading zeros.
#[inline(always)]
fn put_leading(out: &mut Vec<u8>, n: u32) {
    let digits = eight_digits(n);
    // The leading zeros are the low bytes that are still zero; a zero
    // keeps its last digit.
    let zeros = (digits.trailing_zeros() / 8).min(7);
    let at = out.len();
    out.extend_from_slice(&((digits | ASCII_ZEROS) >> (8 * zeros)).to_le_bytes());
    out.truncate(at + 8 - zeros as usize);
}

/// Writes `n` (below 10^8) as eight digits, with leading zeros.
#[inline(always)]
fn put_eight(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&(eight_digits(n) | ASCII_ZEROS).to_le_bytes());
}

/// `'0'` in each byte of a word.
const ASCII_ZEROS: u64 = 0x3030_3030_3030_3030;

/// The eight decimal digits of `n` (below 10^8), one per byte, the first
/// in the lowest byte (so stored little-endian they read in order), as
/// values 0 to 9. The halves, then the quarters, then the digits are split
/// in every lane at once: dividing by 100 (or 10) as a multiplication and a
/// shift, exact for the lanes' ranges (below 10^4, or 100), none of which
/// spills into the next lane.
#[inline(always)]
fn eight_digits(n: u32) -> u64 {
    // Two 32-bit lanes of four digits each: the first half in the low lane.
    let halves = u64::from(n / 10_000) | u64::from(n % 10_000) << 32;
    // v / 100 = (v * 5243) >> 19 for v below 43 699.
    let hundreds = ((halves * 5243) >> 19) & 0x0000_007f_0000_007f;
    // Four 16-bit lanes of two digits each.
    let quarters = hundreds | (halves - hundreds * 100) << 16;
    // v / 10 = (v * 103) >> 10 for v below 179.
    let tens = ((quarters * 103) >> 10) & 0x000f_000f_000f_000f;
    tens | (quarters - tens * 10) << 8
}
