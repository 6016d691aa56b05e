//! Decimal numbers read straight out of a line: the fast path of CSV parsing.
//!
//! Numbers in data files are mostly short decimals (`-0.949412727`, `1.5e-3`, `42`). For
//! those, the value is a mantissa `m < 2⁵³` and a power of ten `10^e` with `|e| ≤ 22`,
//! both exact in `f64`, so one IEEE multiplication or division rounds `m · 10^e` correctly
//! (Clinger's fast path): the result is the same `f64` any correct parser gives. The
//! functions here parse such a number from the start of a byte slice and say how many
//! bytes it took, so the caller finds the field's end in the same pass. Anything else
//! (more than 15 significant digits, larger exponents, `inf`, spaces, quotes) returns
//! `None`, and the caller falls back to a general parser: these functions decide only
//! *whether* the fast path applies, never a different value.

/// Powers of ten that are exact in `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Largest mantissa that is exact in `f64`.
const MAX_EXACT: u64 = 1 << 53;

/// Digits accumulated before giving up (keeps the mantissa well inside `u64`).
const MAX_DIGITS: u32 = 18;

/// Whether all eight bytes of `v` (little-endian) are ASCII digits.
#[inline]
fn eight_digits(v: u64) -> bool {
    let above = v.wrapping_add(0x4646_4646_4646_4646); // > '9' sets the high bit
    let below = v.wrapping_sub(0x3030_3030_3030_3030); // < '0' borrows into the high bit
    (above | below) & 0x8080_8080_8080_8080 == 0
}

/// The value of eight ASCII digits (first digit in the lowest byte).
#[inline]
fn eight_digits_value(v: u64) -> u64 {
    let v = v - 0x3030_3030_3030_3030;
    // Pairs, then quadruples, then the octet, each step combining neighbouring lanes.
    let v = (v * 10) + (v >> 8);
    let v = ((v & 0x0000_00ff_0000_00ff).wrapping_mul(100 + (1_000_000 << 32))
        + ((v >> 16) & 0x0000_00ff_0000_00ff).wrapping_mul(1 + (10_000 << 32)))
        >> 32;
    v & 0xffff_ffff
}

/// Digits of `s` from `*i` into `m`, counting them in `count`: eight at a time while they
/// last, then one at a time. Stops at the first non-digit or when `count` would pass
/// [`MAX_DIGITS`] (the caller sees the digit still there and gives up).
#[inline]
fn digits(s: &[u8], i: &mut usize, m: &mut u64, count: &mut u32) {
    while *count + 8 <= MAX_DIGITS
        && let Some(chunk) = s.get(*i..*i + 8)
    {
        let v = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        if !eight_digits(v) {
            break;
        }
        *m = *m * 100_000_000 + eight_digits_value(v);
        *count += 8;
        *i += 8;
    }
    while let Some(&b) = s.get(*i) {
        let d = b.wrapping_sub(b'0');
        if d > 9 || *count >= MAX_DIGITS {
            break;
        }
        *m = *m * 10 + d as u64;
        *count += 1;
        *i += 1;
    }
}

/// A decimal number at the start of `s`: `[+-]digits[.digits][(e|E)[+-]digits]`, as its
/// correctly rounded `f64` and the number of bytes it spans, when the fast path applies.
///
/// The number ends at the first byte that cannot continue it; the caller checks that this
/// byte is its delimiter.
#[inline]
pub fn parse_f64_prefix(s: &[u8]) -> Option<(f64, usize)> {
    let mut i = 0;
    let negative = match s.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    // Leading zeros carry no significant digits.
    let int_start = i;
    while s.get(i) == Some(&b'0') {
        i += 1;
    }
    let mut m = 0u64;
    let mut count = 0u32;
    digits(s, &mut i, &mut m, &mut count);
    let mut any_digit = i > int_start;
    let mut exponent = 0i32;
    if s.get(i).is_some_and(u8::is_ascii_digit) {
        return None; // too many digits
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        if m == 0 {
            while s.get(i) == Some(&b'0') {
                i += 1;
            }
        }
        let zeros = i - frac_start;
        let before = i;
        digits(s, &mut i, &mut m, &mut count);
        if s.get(i).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let scale = zeros + (i - before);
        if scale > 400 {
            return None; // far outside the fast path's range (and i32's, eventually)
        }
        exponent = -(scale as i32);
        any_digit |= i > frac_start;
    }
    if !any_digit {
        return None;
    }
    if let Some(b'e' | b'E') = s.get(i) {
        i += 1;
        let negative_exp = match s.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let exp_start = i;
        let mut e = 0i32;
        while let Some(&b) = s.get(i) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            if e > 10_000 {
                return None;
            }
            e = e * 10 + d as i32;
            i += 1;
        }
        if i == exp_start {
            return None;
        }
        exponent += if negative_exp { -e } else { e };
    }
    let value = if m == 0 {
        0.0
    } else if m > MAX_EXACT {
        return None;
    } else if (0..=22).contains(&exponent) {
        m as f64 * POW10[exponent as usize]
    } else if (-22..0).contains(&exponent) {
        m as f64 / POW10[(-exponent) as usize]
    } else {
        return None;
    };
    Some((if negative { -value } else { value }, i))
}

/// A decimal integer at the start of `s`, `[+-]digits` with at most 18 digits, and the
/// number of bytes it spans.
#[inline]
pub fn parse_i64_prefix(s: &[u8]) -> Option<(i64, usize)> {
    let (negative, mut i) = match s.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let start = i;
    let mut m = 0u64;
    let mut count = 0u32;
    digits(s, &mut i, &mut m, &mut count);
    if i == start || s.get(i).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let v = m as i64; // < 10¹⁸
    Some((if negative { -v } else { v }, i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(s: &str) -> Option<f64> {
        parse_f64_prefix(s.as_bytes()).and_then(|(v, n)| (n == s.len()).then_some(v))
    }

    #[test]
    fn eight_digit_lanes() {
        let v = u64::from_le_bytes(*b"12345678");
        assert!(eight_digits(v));
        assert_eq!(eight_digits_value(v), 12_345_678);
        assert_eq!(eight_digits_value(u64::from_le_bytes(*b"00000009")), 9);
        assert_eq!(
            eight_digits_value(u64::from_le_bytes(*b"90000000")),
            90_000_000
        );
        for bad in [
            b"1234567.",
            b"/1234567",
            b"1234567:",
            b"12 45678",
            b"-1234567",
        ] {
            assert!(!eight_digits(u64::from_le_bytes(*bad)), "{bad:?}");
        }
    }

    #[test]
    fn common_forms() {
        assert_eq!(whole("0"), Some(0.0));
        assert_eq!(whole("-0.0").map(f64::to_bits), Some((-0.0f64).to_bits()));
        assert_eq!(whole("42"), Some(42.0));
        assert_eq!(whole("+1.5"), Some(1.5));
        assert_eq!(whole("-0.949412727"), Some(-0.949412727));
        assert_eq!(whole(".5"), Some(0.5));
        assert_eq!(whole("5."), Some(5.0));
        assert_eq!(whole("1.5e-3"), Some(1.5e-3));
        assert_eq!(whole("2.41196E+05"), Some(2.41196e5));
        assert_eq!(whole("0.000000000000000000001"), Some(1e-21));
        assert_eq!(whole("1234567890.12345"), Some(1234567890.12345));
        assert_eq!(parse_f64_prefix(b"3.25,7"), Some((3.25, 4)));
        assert_eq!(
            parse_i64_prefix(b"-1700000000000,k"),
            Some((-1_700_000_000_000, 14))
        );
        assert_eq!(parse_i64_prefix(b"000123"), Some((123, 6)));
    }

    #[test]
    fn declines_what_it_cannot_do_exactly() {
        for s in [
            "",
            "-",
            ".",
            "e5",
            "1e",
            "1e+",
            "inf",
            "NaN",
            " 1",
            "\"1\"",
            "0.12345678901234567", // 17 significant digits
            "9007199254740993",    // 2⁵³ + 1
            "1e23",                // 10²³ is not exact
            "1e-23",
            "1234567890123456789012",
        ] {
            assert_eq!(whole(s), None, "{s:?}");
        }
        assert_eq!(parse_i64_prefix(b"1234567890123456789"), None);
        assert_eq!(parse_i64_prefix(b"-"), None);
    }

    proptest! {
        /// Whatever the fast path accepts, it parses to the same bits as the standard
        /// library's correctly rounded parser.
        #[test]
        fn agrees_with_std(v in prop_oneof![any::<f64>().prop_filter("finite", |v| v.is_finite()),
                                             -1e9f64..1e9],
                           digits in 1usize..18, style in 0u8..3) {
            let text = match style {
                0 => format!("{v:.*e}", digits - 1),
                1 => format!("{:.*}", digits.min(12), v / 1e6),
                _ => format!("{v}"),
            };
            if let Some((parsed, n)) = parse_f64_prefix(text.as_bytes()) {
                prop_assert_eq!(n, text.len());
                prop_assert_eq!(parsed.to_bits(), text.parse::<f64>().unwrap().to_bits(), "{}", text);
            }
        }

        #[test]
        fn short_decimals_take_the_fast_path(m in 0u64..1_000_000_000, scale in 0u32..10,
                                              negative in any::<bool>()) {
            let digits = format!("{m:0>width$}", width = scale as usize + 1);
            let (int, frac) = digits.split_at(digits.len() - scale as usize);
            let text = format!("{}{int}.{frac}", if negative { "-" } else { "" });
            let (parsed, n) = parse_f64_prefix(text.as_bytes()).expect("fast path");
            prop_assert_eq!(n, text.len());
            prop_assert_eq!(parsed.to_bits(), text.parse::<f64>().unwrap().to_bits(), "{}", text);
        }

        #[test]
        fn exact_mantissa_and_power(m in 0u64..=(1 << 53), e in -22i32..=22) {
            let text = format!("{m}e{e}");
            let (parsed, _) = parse_f64_prefix(text.as_bytes()).expect("fast path");
            prop_assert_eq!(parsed.to_bits(), text.parse::<f64>().unwrap().to_bits(), "{}", text);
        }

        #[test]
        fn integers(v in -999_999_999_999_999_999i64..=999_999_999_999_999_999) {
            let text = format!("{v},");
            prop_assert_eq!(parse_i64_prefix(text.as_bytes()), Some((v, text.len() - 1)));
        }
    }
}
