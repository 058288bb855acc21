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

use super::Value;

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

/// Two decimal digits for each of 0 to 99.
const PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Writes `n` in decimal into room made at the body's end (20 bytes, the
/// most a `u64` has) and cut to its length: from the right, eight digits at
/// a time as four independent pairs, then pair by pair.
pub(super) fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let len = n.checked_ilog10().map_or(1, |l| l as usize + 1);
    let at = out.len();
    out.extend_from_slice(&[0; 20]);
    let digits = &mut out[at..at + len];
    let mut end = len;
    while n >= 100_000_000 {
        let eight = (n % 100_000_000) as u32;
        n /= 100_000_000;
        let (high, low) = (eight / 10_000, eight % 10_000);
        put_pair(&mut digits[end - 8..], high / 100);
        put_pair(&mut digits[end - 6..], high % 100);
        put_pair(&mut digits[end - 4..], low / 100);
        put_pair(&mut digits[end - 2..], low % 100);
        end -= 8;
    }
    // Below 10^8 now.
    let mut n = n as u32;
    while n >= 100 {
        put_pair(&mut digits[end - 2..], n % 100);
        n /= 100;
        end -= 2;
    }
    if n >= 10 {
        put_pair(digits, n);
    } else {
        digits[0] = b'0' + n as u8;
    }
    out.truncate(at + len);
}

/// Writes `pair` (below 100) as two digits at the start of `to`.
fn put_pair(to: &mut [u8], pair: u32) {
    let at = pair as usize * 2;
    to[..2].copy_from_slice(&PAIRS[at..at + 2]);
}
