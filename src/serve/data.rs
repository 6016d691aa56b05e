//! `POST /data`: CSV or JSON lines into the ingest log; the answer comes once the records
//! are durable.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::app::App;
use super::errors::{error, unavailable};
use super::limits::{declared_over, read_body, too_large};
use crate::record::Schema;
use crate::source::log::AppendError;
use crate::source::{FileFormat, LineParser, RecordBatch, line_too_long};

/// Per-line errors listed in a `POST /data` answer (all are counted in `rejected`).
pub const MAX_LISTED_ERRORS: usize = 100;

/// The answer to `POST /data`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct DataAnswer {
    /// Records accepted (durable, with `--checkpoint`).
    pub accepted: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// The first [`MAX_LISTED_ERRORS`] rejected lines.
    pub errors: Vec<LineError>,
    /// The ingest-log batch (and epoch) the records went into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// Lines (among `rejected`) whose key is over the key-length limit: then nothing of
    /// the body is accepted.
    #[serde(skip)]
    pub keys_too_long: u64,
}

/// A rejected line of a `POST /data` body.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LineError {
    /// 1-based line number in the body.
    pub line: u64,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// The format a content type names, or why it names none (a 415 answer).
fn body_format(headers: &HeaderMap) -> Result<FileFormat, String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err("Content-Type is required: text/csv or application/x-ndjson".into());
    };
    let mime = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "text/csv" | "application/csv" => Ok(FileFormat::Csv),
        "application/x-ndjson"
        | "application/jsonl"
        | "application/json-lines"
        | "application/jsonlines"
        | "application/json" => Ok(FileFormat::Jsonl),
        other => Err(format!(
            "Content-Type {other:?} is not accepted: use text/csv or application/x-ndjson"
        )),
    }
}

/// Parses a `POST /data` body: the records, and the rejected lines. A line longer than
/// `max_line` bytes without its newline (`--max-line-bytes`) is rejected unparsed, as every
/// source refuses it. A record whose key is longer than `max_key_bytes` is a rejected line
/// too (counted in [`DataAnswer::keys_too_long`]), and not kept.
pub(crate) fn parse_body(
    body: &[u8],
    format: FileFormat,
    schema: &Schema,
    max_line: usize,
    max_key_bytes: usize,
) -> Result<(RecordBatch, DataAnswer), String> {
    let mut parser = LineParser::new(format, schema);
    let mut batch = RecordBatch::default();
    let mut answer = DataAnswer::default();
    let reject = |answer: &mut DataAnswer, line: u64, field: Option<String>, message: String| {
        answer.rejected += 1;
        if answer.errors.len() < MAX_LISTED_ERRORS {
            answer.errors.push(LineError {
                line,
                field,
                message,
            });
        }
    };
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let number = i as u64 + 1;
        if line.len() > max_line {
            let message = line_too_long(line.len() as u64, max_line);
            if parser.needs_header() {
                return Err(format!("line {number} (header): {message}"));
            }
            reject(&mut answer, number, None, message);
            continue;
        }
        if parser.needs_header() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            parser
                .header(line, &format!("line {number}"))
                .map_err(|e| e.to_string())?;
            continue;
        }
        match parser.parse(line) {
            Ok(Some(record)) if record.key.len() > max_key_bytes => {
                answer.keys_too_long += 1;
                let message = format!(
                    "the key is {} bytes, over the limit of {max_key_bytes} bytes (--max-key-bytes)",
                    record.key.len()
                );
                reject(&mut answer, number, Some(schema.key.clone()), message);
            }
            Ok(Some(record)) => batch.push(record),
            Ok(None) => {}
            Err((field, message)) => reject(&mut answer, number, field, message),
        }
    }
    answer.accepted = batch.len() as u64;
    Ok((batch, answer))
}

/// An answer given before the request's body was read: the server drops the connection
/// after it (the unread body is still coming), so it says `Connection: close`, and the
/// client does not send its next request down a connection about to close.
fn unread(mut answer: Response) -> Response {
    answer.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    answer
}

pub(super) async fn data(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let context = &app.context;
    let Some(log) = context.log.clone().filter(|_| context.accepts_posts) else {
        return unread(error(
            StatusCode::CONFLICT,
            format!(
                "this run reads {}; POST /data needs --source http",
                context.source
            ),
        ));
    };
    let format = match body_format(&headers) {
        Ok(f) => f,
        Err(message) => return unread(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, message)),
    };
    let limit = app.limits.max_body;
    if declared_over(&headers, limit) {
        return unread(too_large(limit));
    }
    let (bytes, held) = match read_body(&app.limits, &app.stats, &app.budget, body, limit).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let schema = context.schema.clone();
    let metrics = Arc::clone(&context.metrics);
    let keys = Arc::clone(&app.keys);
    let max_key_bytes = app.limits.max_key_bytes;
    let max_line = context.max_line;
    let result = tokio::task::spawn_blocking(move || {
        // The body's bytes stay counted against --max-inflight-bytes until it is done.
        let _held = held;
        let (batch, mut answer) = match parse_body(&bytes, format, &schema, max_line, max_key_bytes)
        {
            Ok(parsed) => parsed,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        drop(bytes);
        metrics
            .malformed
            .fetch_add(answer.rejected, std::sync::atomic::Ordering::Relaxed);
        if answer.keys_too_long > 0 {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": format!(
                        "{} line(s) have a key over {max_key_bytes} bytes (--max-key-bytes): \
                         nothing of this body was accepted",
                        answer.keys_too_long
                    ),
                    "accepted": 0,
                    "rejected": answer.rejected,
                    "errors": answer.errors,
                })),
            )
                .into_response();
        }
        if batch.is_empty() {
            let message = if answer.rejected > 0 {
                "no line parsed"
            } else {
                "no records in the body"
            };
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": message,
                    "accepted": 0,
                    "rejected": answer.rejected,
                    "errors": answer.errors,
                })),
            )
                .into_response();
        }
        let watermark = metrics.watermark.load(Relaxed);
        let admitted = match keys.admit(&batch, watermark) {
            Ok(admitted) => admitted,
            Err(too_many) => return unavailable(too_many.to_string()),
        };
        match log.append(Arc::new(batch)) {
            Ok(seq) => {
                answer.batch = Some(seq);
                (StatusCode::OK, Json(answer)).into_response()
            }
            Err(e) => {
                keys.undo(admitted);
                match e {
                    AppendError::Backpressure { .. } | AppendError::Closed => {
                        unavailable(e.to_string())
                    }
                    e => error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("records not accepted: {e}"),
                    ),
                }
            }
        }
    })
    .await;
    result.unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `ts, key, x, y`.
    fn one_feature() -> Schema {
        Schema {
            time: "ts".into(),
            key: "key".into(),
            features: vec!["x".into()],
            target: "y".into(),
        }
    }

    #[test]
    fn keys_over_the_length_limit_are_counted() {
        let schema = one_feature();
        let body = b"ts,key,x,y\n1,ab,1,2\n2,abcd,1,2\n3,abc,1,2\n";
        let (batch, answer) = parse_body(body, FileFormat::Csv, &schema, 1 << 20, 3).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!((answer.rejected, answer.keys_too_long), (1, 1));
        assert_eq!(answer.errors[0].line, 3);
        assert!(answer.errors[0].message.contains("--max-key-bytes"));
        // A key of exactly the limit is taken, as a line of exactly the line limit is.
        let (batch, _) =
            parse_body(b"ts,key,x,y\n1,abc,1,2\n", FileFormat::Csv, &schema, 10, 3).unwrap();
        assert_eq!(batch.len(), 1);
    }

    /// A line longer than `--max-line-bytes` (without its newline) is rejected with its
    /// number, length and the flag, as every source refuses it; one of exactly the limit
    /// is taken; the lines after it are read; a header that long refuses the body.
    #[test]
    fn lines_over_the_line_limit_are_rejected() {
        let schema = one_feature();
        // Lines of 10 (exactly the limit), 11 and 9 bytes, and 11 with a `\r`.
        let body = b"ts,key,x,y\n1,abcd,1,2\n2,abcde,1,2\n3,abc,1,2\n4,abcd,1,2\r\n5,a,1,2";
        let (batch, answer) = parse_body(body, FileFormat::Csv, &schema, 10, 256).unwrap();
        assert_eq!((batch.len(), answer.rejected), (3, 2));
        let lines: Vec<u64> = answer.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 5]);
        assert_eq!(
            answer.errors[0].message,
            "11 bytes, longer than the limit of 10 bytes (--max-line-bytes)"
        );
        let e = parse_body(body, FileFormat::Csv, &schema, 9, 256).unwrap_err();
        assert!(e.starts_with("line 1 (header): 10 bytes"), "{e}");
        let json =
            b"{\"ts\":1,\"key\":\"k\",\"x\":1,\"y\":2}\n{\"ts\":2,\"key\":\"kk\",\"x\":1,\"y\":2}";
        let (batch, answer) = parse_body(json, FileFormat::Jsonl, &schema, 30, 256).unwrap();
        assert_eq!((batch.len(), answer.rejected), (1, 1));
        assert_eq!(answer.errors[0].line, 2);
    }
}
