//! Kubernetes `Quantity` strings: formatting metric values the way the
//! apiserver's `resource.Quantity` canonicalises them, and parsing the ones an
//! HPA manifest holds.
//!
//! Values are carried with milli precision, like the custom metrics adapters'
//! `NewMilliQuantity`: 42.5 → `42500m`, 70 → `70`, 2000 → `2k`.

/// Why a quantity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {input:?}: {reason}")]
pub struct QuantityError {
    /// The string given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

const DECIMAL_SUFFIXES: [(i32, &str); 10] =
    [(-9, "n"), (-6, "u"), (-3, "m"), (0, ""), (3, "k"), (6, "M"), (9, "G"), (12, "T"), (15, "P"), (18, "E")];

/// Formats a value as a canonical decimal-SI quantity with milli precision.
/// Non-finite values (never produced by a sample) format as `0`.
pub fn format_quantity(value: f64) -> String {
    let mut out = String::with_capacity(24);
    write_quantity(&mut out, value);
    out
}

/// Appends the canonical quantity of `value` to `out`.
pub fn write_quantity(out: &mut String, value: f64) {
    let milli = (value * 1000.0).round();
    if !milli.is_finite() {
        out.push('0');
        return;
    }
    // Clamp to what a Kubernetes int64 quantity holds.
    let milli = milli.clamp(i64::MIN as f64, i64::MAX as f64) as i64;
    if milli == 0 {
        out.push('0');
        return;
    }
    if milli < 0 {
        out.push('-');
    }
    let mut mantissa = milli.unsigned_abs();
    let mut exponent = -3;
    while mantissa.is_multiple_of(1000) && exponent < 18 {
        mantissa /= 1000;
        exponent += 3;
    }
    out.push_str(itoa::Buffer::new().format(mantissa));
    let suffix = DECIMAL_SUFFIXES.iter().find(|(e, _)| *e == exponent).map_or("", |(_, s)| s);
    out.push_str(suffix);
}

/// Parses a quantity (`70`, `500m`, `1.5`, `2k`, `1Gi`, `1e3`) into a number.
pub fn parse_quantity(input: &str) -> Result<f64, QuantityError> {
    let err = |reason| QuantityError { input: input.to_string(), reason };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.len() > 64 {
        return Err(err("longer than 64 characters"));
    }
    let number_end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '+' || c == '-') && i == 0)))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(number_end);
    if number.is_empty() || number == "+" || number == "-" || number.ends_with('.') && number.len() == 1 {
        return Err(err("no number"));
    }
    if number.matches('.').count() > 1 {
        return Err(err("more than one decimal point"));
    }
    let base: f64 = number.parse().map_err(|_| err("not a number"))?;
    let multiplier = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        // `E` alone is exa, as in Kubernetes; `e`/`E` with digits is an exponent.
        "E" => 1e18,
        _ if suffix.starts_with(['e', 'E']) => {
            let exponent: i32 = suffix[1..].parse().map_err(|_| err("bad exponent"))?;
            if !(-30..=30).contains(&exponent) {
                return Err(err("exponent out of range"));
            }
            10f64.powi(exponent)
        }
        _ => match DECIMAL_SUFFIXES.iter().find(|(_, s)| *s == suffix) {
            Some((exponent, _)) => 10f64.powi(*exponent),
            None => return Err(err("unknown suffix")),
        },
    };
    Ok(base * multiplier)
}

#[cfg(test)]
mod tests;
