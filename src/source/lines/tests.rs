//! The line parser's tests: CSV and JSON lines, errors naming their field, and the
//! vectorised CSV path ([`fast_csv`]) checked against the general parser.

use proptest::prelude::*;

use super::*;

/// Fields `ts`, `key`, `x0`, `x1`, `y` (the file readers' tests use it too).
pub(in crate::source) fn schema() -> Schema {
    Schema {
        time: "ts".into(),
        key: "key".into(),
        features: vec!["x0".into(), "x1".into()],
        target: "y".into(),
    }
}

/// A CSV parser of columns `ts,key,x0,note,x1,y` (`note` is not in the schema).
fn parser() -> LineParser {
    let mut p = LineParser::new(FileFormat::Csv, &schema());
    p.header(b"ts,key,x0,note,x1,y", "test").unwrap();
    p
}

/// (time, key, z) of a line, or its error.
fn parse(line: &str) -> Result<Option<(i64, String, Vec<f64>)>, LineError> {
    let mut p = parser();
    p.parse(line.as_bytes())
        .map(|r| r.map(|r| (r.time, r.key.to_owned(), r.z.to_vec())))
}

fn ok(line: &str) -> (i64, String, Vec<f64>) {
    parse(line).unwrap().unwrap()
}

#[test]
fn fast_and_general_paths_agree() {
    let short = ok("17,k1,-0.949412727,any text,2.5e-3,42");
    assert_eq!(short, (17, "k1".into(), vec![-0.949412727, 2.5e-3, 42.0]));
    // Long mantissas, padding and a float time take the general path per field.
    let long = ok(" 17.0 ,k1, -0.94941272741255233 ,x,0.1234567890123456789,1e150\r");
    assert_eq!(long.0, 17);
    assert_eq!(
        long.2,
        ["-0.94941272741255233", "0.1234567890123456789", "1e150"]
            .map(|t| t.parse::<f64>().unwrap())
    );
    // Quotes anywhere: the quoting-aware parser, commas inside quotes included.
    let quoted = ok("17,\"k,1\",1.5,\"a, b\",2,3");
    assert_eq!(quoted, (17, "k,1".into(), vec![1.5, 2.0, 3.0]));
    assert_eq!(parse("  ").unwrap(), None);
}

#[test]
fn errors_name_the_field_or_count() {
    let field = |line: &str| parse(line).unwrap_err().0;
    assert_eq!(field("17,k,1.5,n,abc,3"), Some("x1".into()));
    assert_eq!(field("17,k,1.5,n,2,"), Some("y".into()));
    assert_eq!(field("1.5,k,1,n,2,3"), Some("ts".into()));
    assert_eq!(field("17,k,inf,n,2,3"), Some("x0".into()));
    let mut twice = LineParser::new(FileFormat::Csv, &schema());
    let e = twice.header(b"ts,key,x0,x1,y,x0", "in.csv").unwrap_err();
    assert!(e.to_string().contains("\"x0\" appears twice"), "{e}");
    // Values within ±1e150 only (no square or product of two overflows), on the
    // fast path, the general path (padding) and in quotes.
    for bad in [
        "17,k,1e200,n,2,3",
        "17,k,1,n,-1.0000001e150,3",
        "17,k,1,n,2, 1e151 ",
        "17,k,1,n,2,\"1e300\"",
        "17,k,1,n,2,1e400",
    ] {
        let (field, message) = parse(bad).unwrap_err();
        assert!(field.is_some(), "{bad}");
        assert!(message.contains("1e150"), "{bad}: {message}");
    }
    assert_eq!(field("17,k,1e200,n,2,3"), Some("x0".into()));
    assert_eq!(ok("17,k,-1e150,n,1e-300,0").2, vec![-1e150, 1e-300, 0.0]);
    let mut json = LineParser::new(FileFormat::Jsonl, &schema());
    let (field, message) = json
        .parse(br#"{"ts":1,"key":"k","x0":1e200,"x1":2,"y":3}"#)
        .unwrap_err();
    assert_eq!(field, Some("x0".into()));
    assert!(message.contains("1e150"), "{message}");
    // Date-times, with an offset or taken as UTC.
    let t = |text: &str| ok(&format!("{text},k,1,n,2,3")).0;
    assert_eq!(t("2023-11-14T22:13:20Z"), 1_700_000_000_000);
    assert_eq!(t("2023-11-14T22:13:20.250Z"), 1_700_000_000_250);
    assert_eq!(t("2023-11-15 00:13:20.250+02:00"), 1_700_000_000_250);
    assert_eq!(t("2023-11-14T22:13:20"), 1_700_000_000_000);
    assert_eq!(t("2023-11-14 22:13:20.5"), 1_700_000_000_500);
    assert_eq!(t("1969-12-31T23:59:59.9995Z"), -1, "sub-ms digits floor");
    for bad in [
        "2023-11-14",
        "2023-13-14T22:13:20Z",
        "2023-11-14T22:13:20+25:00",
    ] {
        let (field, message) = parse(&format!("{bad},k,1,n,2,3")).unwrap_err();
        assert_eq!(field, Some("ts".into()), "{bad}");
        assert!(message.contains("not a time"), "{bad}: {message}");
    }
    // Event times up to ±2^62 ms, no further.
    let limit = crate::record::TIME_LIMIT;
    assert_eq!(ok(&format!("{limit},k,1,n,2,3")).0, limit);
    assert_eq!(ok(&format!("-{limit},k,1,n,2,3")).0, -limit);
    for t in [limit + 1, i64::MIN, i64::MAX] {
        let (field, message) = parse(&format!("{t},k,1,n,2,3")).unwrap_err();
        assert_eq!(field, Some("ts".into()));
        assert!(message.contains("out of range"), "{message}");
    }
    let mut json = LineParser::new(FileFormat::Jsonl, &schema());
    let line = r#"{"ts":"2023-11-14T22:13:20.250Z","key":"k","x0":1,"x1":2,"y":3}"#;
    let record = json.parse(line.as_bytes()).unwrap().unwrap();
    assert_eq!(record.time, 1_700_000_000_250, "a JSON string date-time");
    for t in [format!("{}", limit + 1), u64::MAX.to_string()] {
        let line = format!(r#"{{"ts":{t},"key":"k","x0":1,"x1":2,"y":3}}"#);
        let (field, message) = json.parse(line.as_bytes()).unwrap_err();
        assert_eq!(field, Some("ts".into()), "{line}");
        assert!(message.contains("out of range"), "{line}: {message}");
    }
    let count = |line: &str| parse(line).unwrap_err();
    assert_eq!(
        count("17,k,1.5,n,2"),
        (None, "expected 6 fields, found 5".into())
    );
    assert_eq!(
        count("17,k,1.5,n,2,3,4,5"),
        (None, "expected 6 fields, found 8".into())
    );
    assert_eq!(
        count("17,k,1.5,n,2,3,"),
        (None, "expected 6 fields, found 7".into())
    );
    assert_eq!(
        count("17,k,\"1.5\",n,2"),
        (None, "expected 6 fields, found 5".into())
    );
}

// The vectorised path: whatever it accepts, it reads as the general parser does.

/// The fast path on `line` preceded and followed by other text (so that its loads
/// reach past the line, as in a file), checked against the general parser: whatever
/// it accepts, it reads as [`LineParser::parse`] does, to the bit, and it resumes
/// after the line's newline. Returns whether it accepted. `parser` gives a parser with
/// the header read.
fn check_with(parser: fn() -> LineParser, line: &str) -> bool {
    let before = "0,k,1,n,2,3\n".repeat(2);
    let bytes = format!("{before}{line}{}", "9,k,1,n,2,3\n".repeat(12));
    let mut fast = parser();
    let Some((record, next)) = fast.parse_csv_at(bytes.as_bytes(), before.len()) else {
        return false;
    };
    let line_end = before.len() + line.find('\n').expect("accepted a line without newline");
    assert_eq!(next, line_end + 1, "{line:?}");
    let mut general = parser();
    let expected = general
        .parse(&bytes.as_bytes()[before.len()..line_end])
        .unwrap_or_else(|e| panic!("fast path accepted {line:?}, general parser: {e:?}"))
        .expect("a record");
    assert_eq!(record.time, expected.time, "{line:?}");
    assert_eq!(record.key, expected.key, "{line:?}");
    let bits = |z: &[f64]| z.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(record.z), bits(expected.z), "{line:?}");
    true
}

/// Columns `ts,key,x0,x1,y`: the schema's order, read without dispatch per field.
fn in_order_parser() -> LineParser {
    let mut parser = parser();
    parser.header(b"ts,key,x0,x1,y\n", "test").unwrap();
    parser
}

/// [`check_with`] on a line of columns `ts,key,x0,note,x1,y`; and on the line without
/// its `note`, with the columns in the schema's order. Returns whether the fast path
/// took each.
fn check(line: &str) -> (bool, bool) {
    let mut fields: Vec<&str> = line.split(',').collect();
    if fields.len() > 3 {
        fields.remove(3);
    }
    let in_order = fields.join(",");
    (
        check_with(parser, line),
        check_with(in_order_parser, &in_order),
    )
}

#[test]
fn takes_short_decimals() {
    if !fast_csv::available() {
        return; // nothing to check on this CPU: every line takes the general path
    }
    for line in [
        "1700000000000,k7,-0.949412727,abc,12.5,3\n",
        "0,15,1.43395829,,-0.0,.5\n",
        "-42,a_b,5.,note w spaces,123456789012345,0.0000000000001\r\n",
        "7,K,999999999999999,x,-1,-99999999999999\n",
    ] {
        assert_eq!(check(line), (true, true), "declined {line:?}");
    }
}

#[test]
fn declines_what_needs_the_general_parser() {
    for line in [
        "1,k,1e5,n,2,3\n",                     // exponent
        "1,k,+1,n,2,3\n",                      // plus sign
        "1,k,1.2.3,n,2,3\n",                   // two points
        "1,k,-,n,2,3\n",                       // no digits
        "1,k,,n,2,3\n",                        // empty number
        "1,k,1234567890123456,n,2,3\n",        // 16 digits
        "1,k, 1,n,2,3\n",                      // space
        "1,\"k\",1,n,2,3\n",                   // quoted key
        "1,k,1,\"a,b\",2,3\n",                 // quoted skipped field
        "1,a b,1,n,2,3\n",                     // space in a key
        "1,ключ,1,n,2,3\n",                    // non-ASCII key
        "1.5,k,1,n,2,3\n",                     // fractional time
        "1,k,1,n,2\n",                         // too few fields
        "1,k,1,n,2,3,4\n",                     // too many fields
        "1,k,1,n,2,3\r5\n",                    // stray carriage return
        "1,k,1,a very long note indeed,2,3\n", // skipped field of 16+ bytes
    ] {
        assert!(!check(line).0, "accepted {line:?}");
    }
}

#[test]
fn declines_a_line_that_runs_past_the_bytes() {
    // The third line starts 24 bytes in, with 12 bytes after it: fewer than the 64
    // the separator masks read.
    let bytes = b"0,k,1,n,2,3\n0,k,1,n,2,3\n1,k,2,n,3,4\n";
    assert!(parser().parse_csv_at(bytes, 24).is_none());
    // Enough bytes after it, and the same line is taken (where the CPU allows).
    let padded = [&bytes[..], &[b'\n'; 64]].concat();
    let taken = parser()
        .parse_csv_at(&padded, 24)
        .map(|(r, next)| (r.time, next));
    assert_eq!(taken, fast_csv::available().then_some((1, 36)));
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<f64>(), 0usize..17).prop_map(|(v, p)| format!("{v:.p$}")),
        (-1e6f64..1e6, 0usize..12).prop_map(|(v, p)| format!("{v:.p$}")),
        (-1e3f64..1e3, 1usize..10).prop_map(|(v, p)| format!("{v:.p$e}")),
        any::<i32>().prop_map(|v| v.to_string()),
        "[-+.0-9e]{0,17}",
    ]
}

proptest! {
    /// Lines of numbers in many forms, valid and not: the fast path reads every line
    /// it accepts exactly as the general parser does.
    #[test]
    fn agrees_with_the_general_parser(
        ts in prop_oneof![any::<i64>().prop_map(|t| (t / 1000).to_string()), "[-0-9.]{0,17}"],
        key in "[a-zA-Z0-9_ \"é]{0,17}",
        x0 in number(), note in "[a-z ,\"]{0,17}", x1 in number(), y in number(),
        end in prop_oneof![Just("\n"), Just("\r\n")],
    ) {
        check(&format!("{ts},{key},{x0},{note},{x1},{y}{end}"));
    }

    /// Short decimals are always accepted.
    #[test]
    fn accepts_every_short_decimal(
        ts in -99_999_999_999_999i64..=99_999_999_999_999,
        key in "[a-zA-Z0-9_]{1,15}",
        digits in "[0-9]{1,13}", point in 0usize..=14, negative: bool,
    ) {
        prop_assume!(fast_csv::available());
        // At most 15 bytes: a sign, 13 digits, a point.
        let sign = if negative { "-" } else { "" };
        let x = match point.min(digits.len() + 1) {
            p if p > digits.len() => format!("{sign}{digits}"),
            p => format!("{sign}{}.{}", &digits[..p], &digits[p..]),
        };
        let line = format!("{ts},{key},{x},n,{x},{x}\n");
        prop_assert_eq!(check(&line), (true, true), "declined {:?}", line);
    }
}
