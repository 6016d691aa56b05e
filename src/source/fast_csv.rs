//! The vectorised fast path of CSV files: a whole line of short decimals read with SIMD
//! instructions, about three times faster than the general parser (`cargo bench --bench
//! csv`).
//!
//! A line qualifies when every number in it is `[-]digits[.digits]` at most 15 bytes long
//! (so at most 15 digits), its key is at most 15 printable ASCII bytes without quotes or
//! spaces, every skipped field is at most 15 bytes without quotes, and it ends in `\n` (or
//! `\r\n`) with the header's number of fields.
//!
//! For such a line the fields are found from masks of its separators, 64 bytes at a time,
//! so no field waits for the one before it. Each number is read as the 16 bytes that end
//! with it: one shuffle closes the gap of its decimal point and zeroes what precedes its
//! digits, and multiply-adds convert the sixteen digits to an integer. With at most 15
//! digits that integer is exact in `f64` and the scale at most 10¹⁵, so one division rounds
//! correctly and the value is the one any correct parser gives (Clinger's fast path, as in
//! [`decimal`](super::decimal)); dividing by `-10ᵏ` gives the sign, `-0.0` included.
//! Whether every byte that should be a digit is one is gathered over the line and checked
//! once, at its end.
//!
//! Any line that does not qualify (an exponent, a `+` sign, a long number, a quote, a
//! wrong field count, the last line of a file without a newline) is declined as a whole,
//! and the caller parses it with [`LineParser::parse`](super::lines::LineParser::parse), which
//! gives the errors. The fast path never decides a different value, only whether it
//! applies. It needs SSSE3 and SSE4.1 (every x86-64 CPU since 2008), checked at run time;
//! elsewhere every line takes the general path.

/// What a column or JSON field is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    Time,
    Key,
    /// Index into `z = [x, y]`.
    Z(usize),
    Skip,
}

/// Where a line's fields go: the parser's scratch record.
pub(super) struct Scratch<'a> {
    pub time: &'a mut i64,
    /// Where the key is in the bytes given to [`line`].
    pub key: &'a mut std::ops::Range<usize>,
    pub z: &'a mut [f64],
    /// The power of ten each of `z` is to be divided by, as long as `z`.
    pub scale: &'a mut [f64],
}

/// Whether this CPU has what [`line`] needs.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Parses the CSV line that starts at byte `pos` of `bytes` into `out`, field by field in
/// `columns`' order, and returns the position after its newline; `None` if the line does
/// not qualify for the fast path (see the module's documentation). `in_order` says that
/// the columns are exactly `time, key, z₀ … z_d` (see [`in_order`]). `out` may be partly
/// written then.
///
/// # Safety
///
/// [`available`] must have said that this CPU has what the fast path needs: it runs
/// SSSE3 and SSE4.1 instructions.
#[inline]
pub(super) unsafe fn line(
    bytes: &[u8],
    pos: usize,
    columns: &[Slot],
    in_order: bool,
    out: Scratch<'_>,
) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        debug_assert!(available());
        debug_assert_eq!(in_order, self::in_order(columns, out.z.len()));
        // SAFETY: the caller checked the CPU features with `available` (this function's
        // contract).
        unsafe { x86::line(bytes, pos, columns, in_order, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (bytes, pos, columns, in_order, out);
        None
    }
}

/// Whether `columns` are exactly the time, the key and the `z` values in order (no other
/// column): such lines are read without looking up each field's slot.
pub(super) fn in_order(columns: &[Slot], z: usize) -> bool {
    let order = [Slot::Time, Slot::Key]
        .into_iter()
        .chain((0..z).map(Slot::Z));
    columns.iter().copied().eq(order)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Scratch, Slot};

    /// Powers of ten that are exact in `f64` (the scale of a number of at most 15 digits),
    /// positive and negative: dividing by `-10ᵏ` rounds as dividing by `10ᵏ` does, and
    /// gives the sign.
    const SCALE: [[f64; 16]; 2] = {
        let mut table = [[1.0; 16]; 2];
        let mut k = 1;
        while k < 16 {
            table[0][k] = table[0][k - 1] * 10.0; // exact up to 10²²
            k += 1;
        }
        k = 0;
        while k < 16 {
            table[1][k] = -table[0][k];
            k += 1;
        }
        table
    };

    /// Shuffles of the 16 bytes that end with a number into its digits, right-aligned, with
    /// zeros before them: entry `[after][digits]` is for a number of `digits` digits of
    /// which `after` follow a point (16: no point). The bytes after the point stay where
    /// they are, the bytes before it move up by one, over the point, and the first
    /// `16 - digits` bytes (a sign, the previous field) become zeros.
    const DIGITS: [[[u8; 16]; 16]; 17] = {
        let mut table = [[[0u8; 16]; 16]; 17];
        let mut after = 0;
        while after <= 16 {
            let mut digits = 0;
            while digits < 16 {
                let mut i = 0;
                while i < 16 {
                    table[after][digits][i] = if i < 16 - digits {
                        0x80 // zero
                    } else if i + after > 15 {
                        i as u8
                    } else {
                        (i - 1) as u8
                    };
                    i += 1;
                }
                digits += 1;
            }
            after += 1;
        }
        table
    };

    #[target_feature(enable = "ssse3,sse4.1")]
    fn splat(b: u8) -> __m128i {
        _mm_set1_epi8(b as i8)
    }

    /// Bit `i` set where byte `i` of `v` equals `b`.
    #[target_feature(enable = "ssse3,sse4.1")]
    fn mask_eq(v: __m128i, b: u8) -> u32 {
        _mm_movemask_epi8(_mm_cmpeq_epi8(v, splat(b))) as u32
    }

    /// Bit `i` set where byte `at + i` of `bytes` ends a field (a comma, `\n` or `\r`),
    /// for the 64 bytes from `at`, if there are 64. Fields are found from these masks, so
    /// no field's position waits for the previous field to be read.
    #[target_feature(enable = "ssse3,sse4.1")]
    fn separators(bytes: &[u8], at: usize) -> Option<u64> {
        let chunk = bytes.get(at..at.checked_add(64)?)?;
        let mut mask = 0;
        for i in 0..4 {
            // SAFETY: sixteen of `chunk`'s 64 bytes; the load is unaligned.
            let v = unsafe { _mm_loadu_si128(chunk.as_ptr().add(16 * i).cast()) };
            let ends = mask_eq(v, b',') | mask_eq(v, b'\n') | mask_eq(v, b'\r');
            mask |= (ends as u64) << (16 * i);
        }
        Some(mask)
    }

    /// The number in the last `len` (< 16) bytes of `v`, taken as `[-]digits[.digits]`
    /// with `negative` saying whether its first byte is the minus: its digits as an
    /// integer and how many of them follow the point (`None` without a point). Bytes that
    /// are not digits where digits should be are flagged in `bad`, for the caller to
    /// decline the line once at its end; `None` when there are no digits at all.
    #[target_feature(enable = "ssse3,sse4.1")]
    fn decimal(
        v: __m128i,
        len: usize,
        negative: bool,
        bad: &mut __m128i,
    ) -> Option<(u64, Option<usize>)> {
        let points = mask_eq(v, b'.') >> (16 - len);
        let point = (points != 0).then(|| points.trailing_zeros() as usize);
        let after = point.map_or(16, |p| len - p - 1);
        let digits = len - negative as usize - point.is_some() as usize;
        if digits == 0 {
            return None;
        }
        // SAFETY: `after` ≤ 16 and `digits` < 16 index the table; the load is unaligned.
        let shuffle = unsafe { _mm_loadu_si128(DIGITS[after][digits].as_ptr().cast()) };
        let v = _mm_shuffle_epi8(_mm_sub_epi8(v, splat(b'0')), shuffle);
        // A digit is 0..=9 now: anything above (unsigned) was not a digit.
        *bad = _mm_or_si128(*bad, _mm_subs_epu8(v, splat(9)));
        // Pairs, quadruples, octets: two 8-digit halves, the first the more significant.
        let v = _mm_maddubs_epi16(v, _mm_set1_epi16(0x010a)); // bytes (10, 1)
        let v = _mm_madd_epi16(v, _mm_set1_epi32(0x0001_0064)); // words (100, 1)
        let v = _mm_packus_epi32(v, v);
        let v = _mm_madd_epi16(v, _mm_set1_epi32(0x0001_2710)); // words (10000, 1)
        let high = _mm_cvtsi128_si32(v) as u32 as u64;
        let low = _mm_extract_epi32::<1>(v) as u32 as u64;
        Some((high * 100_000_000 + low, point.map(|_| after)))
    }

    /// Bit `i` set where byte `i` of `v` is printable ASCII other than a space or a quote.
    #[target_feature(enable = "ssse3,sse4.1")]
    fn plain(v: __m128i) -> u32 {
        let printable = _mm_and_si128(
            _mm_cmpgt_epi8(v, splat(b' ')), // signed: bytes ≥ 0x80 are below
            _mm_cmplt_epi8(v, splat(0x7f)),
        );
        _mm_movemask_epi8(printable) as u32 & !mask_eq(v, b'"')
    }

    /// A line being read: where its next field starts, the separators not used yet, and
    /// what is wrong with the fields so far (checked once, at the end).
    struct Line<'b> {
        bytes: &'b [u8],
        start: usize,
        /// The separators of the 64 bytes from `chunk` not used yet.
        chunk: usize,
        ends: u64,
        /// Non-digits where digits should be, over the line.
        bad: __m128i,
        /// Bad bytes of keys and skipped fields, over the line.
        bad_bytes: u32,
    }

    /// A field: where it starts, its length (< 16), and the sixteen bytes ending with it.
    struct Field {
        start: usize,
        len: usize,
        v: __m128i,
    }

    impl Line<'_> {
        #[target_feature(enable = "ssse3,sse4.1")]
        fn new(bytes: &[u8], pos: usize) -> Option<Line<'_>> {
            // A field is read as the sixteen bytes that end with it: from `pos - 16` on.
            if pos < 16 {
                return None;
            }
            Some(Line {
                bytes,
                start: pos,
                chunk: pos,
                ends: separators(bytes, pos)?,
                bad: _mm_setzero_si128(),
                bad_bytes: 0,
            })
        }

        /// The next field: ended by a comma, or by the line's end if it is the `last`.
        #[target_feature(enable = "ssse3,sse4.1")]
        fn field(&mut self, last: bool) -> Option<Field> {
            while self.ends == 0 {
                self.chunk += 64;
                self.ends = separators(self.bytes, self.chunk)?;
            }
            let end = self.chunk + self.ends.trailing_zeros() as usize;
            self.ends &= self.ends - 1;
            let start = self.start;
            let len = end - start;
            if len >= 16 || (self.bytes[end] == b',') == last {
                return None;
            }
            self.start = end + 1;
            // SAFETY: `start ≥ 16` (`new`) and `end ≥ start`, and `end < chunk + 64 ≤
            // bytes.len()` (`separators` checked): the sixteen bytes before `end` are in
            // `bytes`.
            let v = unsafe { _mm_loadu_si128(self.bytes.as_ptr().add(end - 16).cast()) };
            Some(Field { start, len, v })
        }

        /// The field as `[-]digits[.digits]`: whether it has the minus, and [`decimal`]'s
        /// digits and digits after the point (its bad bytes go to the line's).
        #[target_feature(enable = "ssse3,sse4.1")]
        fn decimal(&mut self, f: &Field) -> Option<(bool, u64, Option<usize>)> {
            let negative = self.bytes[f.start] == b'-';
            let (m, after) = decimal(f.v, f.len, negative, &mut self.bad)?;
            Some((negative, m, after))
        }

        /// The field as a number: its digits as an exact `f64`, and the power of ten to
        /// divide them by, with the text's sign (so `-0` is negative zero: `0 / -1`).
        #[target_feature(enable = "ssse3,sse4.1")]
        fn number(&mut self, f: &Field) -> Option<(f64, f64)> {
            let (negative, m, after) = self.decimal(f)?;
            let m = m as i64 as f64; // < 10¹⁵ < 2⁵³: exact
            Some((m, SCALE[negative as usize][after.unwrap_or(0)]))
        }

        /// The field as an integer time.
        #[target_feature(enable = "ssse3,sse4.1")]
        fn time(&mut self, f: &Field) -> Option<i64> {
            match self.decimal(f)? {
                (negative, m, None) => Some(if negative { -(m as i64) } else { m as i64 }),
                _ => None,
            }
        }

        /// The field as a key: where it is in the bytes.
        #[target_feature(enable = "ssse3,sse4.1")]
        fn key(&mut self, f: &Field) -> std::ops::Range<usize> {
            self.bad_bytes |= f.mask() & !plain(f.v);
            f.start..f.start + f.len
        }

        /// A field not in the schema: any text, as long as no quote can hide a comma.
        #[target_feature(enable = "ssse3,sse4.1")]
        fn skip(&mut self, f: &Field) {
            self.bad_bytes |= f.mask() & mask_eq(f.v, b'"');
        }

        /// Where the next line starts, if every field was good and the line ends here.
        #[target_feature(enable = "ssse3,sse4.1")]
        fn finish(self) -> Option<usize> {
            if _mm_testz_si128(self.bad, self.bad) == 0 || self.bad_bytes != 0 {
                return None;
            }
            // `start` is past the last field's end: `\n`, or `\r\n`.
            match self.bytes[self.start - 1] {
                b'\n' => Some(self.start),
                b'\r' if self.bytes.get(self.start) == Some(&b'\n') => Some(self.start + 1),
                _ => None,
            }
        }
    }

    impl Field {
        /// Bit `i` set where byte `i` of `v` is in the field.
        fn mask(&self) -> u32 {
            !0u32 << (16 - self.len) & 0xffff
        }
    }

    /// See [`super::line`].
    #[target_feature(enable = "ssse3,sse4.1")]
    pub(super) fn line(
        bytes: &[u8],
        pos: usize,
        columns: &[Slot],
        in_order: bool,
        out: Scratch<'_>,
    ) -> Option<usize> {
        let mut line = Line::new(bytes, pos)?;
        let last = columns.len().checked_sub(1)?;
        let z = out.z.len();
        if in_order {
            // No dispatch per field.
            let f = line.field(false)?;
            *out.time = line.time(&f)?;
            let f = line.field(false)?;
            *out.key = line.key(&f);
            for i in 0..z {
                let f = line.field(i + 1 == z)?;
                (out.z[i], out.scale[i]) = line.number(&f)?;
            }
        } else {
            for (c, &slot) in columns.iter().enumerate() {
                let f = line.field(c == last)?;
                match slot {
                    Slot::Z(i) => (out.z[i], out.scale[i]) = line.number(&f)?,
                    Slot::Time => *out.time = line.time(&f)?,
                    Slot::Key => *out.key = line.key(&f),
                    Slot::Skip => line.skip(&f),
                }
            }
        }
        let next = line.finish()?;
        // The digits over an exact power of ten: one correctly rounded division each
        // (Clinger's fast path), two to an instruction.
        for (z, scale) in out.z.iter_mut().zip(out.scale.iter()) {
            *z /= scale;
        }
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn in_order_is_exactly_time_key_z() {
        use super::Slot::{Key, Skip, Time, Z};
        use super::in_order;
        assert!(in_order(&[Time, Key, Z(0), Z(1)], 2));
        assert!(!in_order(&[Time, Key, Z(1), Z(0)], 2));
        assert!(!in_order(&[Key, Time, Z(0), Z(1)], 2));
        assert!(!in_order(&[Time, Key, Z(0), Skip, Z(1)], 2));
        assert!(!in_order(&[Time, Key, Z(0)], 2));
        assert!(!in_order(&[Time, Key, Z(0), Z(1), Skip], 2));
    }
}
