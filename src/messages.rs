//! The messages the workers' operators send each other besides records and pane
//! statistics: a worker's progress after a batch, commit notices, checkpoint
//! acknowledgements, the records set aside and the models emitted (with their `--out`
//! JSON form). Below the dataflow and the checkpoint store, so that both can name them
//! without importing each other. (How a model is kept in a checkpoint store, in this
//! build's layout or an earlier one's, is the store's business:
//! [`ModelLine::decode_stored`] is in [`crate::checkpoint::codec`].)

use serde::{Deserialize, Serialize};

use crate::model::{Fit, Status};
use crate::sink::{JsonLine, OrderKey};
use crate::types::{Counts, Epoch};
use crate::window::{Time, Window};

/// A worker's event-time progress after one batch, broadcast to every worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The reporting worker.
    pub worker: usize,
    /// Largest event time it admitted so far (`Time::MAX` once its share is done).
    pub max_seen: Time,
    /// What the batch held.
    pub counts: Counts,
    /// Whether the epoch of this report is a checkpoint epoch.
    pub checkpoint: bool,
    /// Whether this batch was the source's idle close (`--close-after-idle`): the
    /// partition's largest time was moved past every window open.
    pub idle: bool,
}

/// What the windows operator hears besides the pane statistics (broadcast to every worker).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// A worker's progress after one of its batches.
    Progress(Progress),
    /// Every worker's part of this checkpoint epoch is durable and committed.
    Committed(Epoch),
}

/// A worker's part of a checkpoint epoch is durable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The checkpoint epoch.
    pub epoch: Epoch,
    /// The worker.
    pub worker: usize,
    /// Largest event time admitted by each worker, as of the epoch.
    pub max_seen: Vec<Time>,
}

/// A record set aside instead of being folded into its windows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetAside {
    /// Event time.
    pub ts: Time,
    /// Key.
    pub key: String,
    /// Features.
    pub x: Vec<f64>,
    /// Target.
    pub y: f64,
    /// Why: `late`, `too_far_ahead`, `time_out_of_range`, `value_out_of_range` or
    /// `quarantined` (see [`crate::quarantine`]).
    pub reason: String,
    /// The watermark of its partition when it arrived.
    pub watermark: Time,
}

/// One model emission: a line of `--out`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelLine {
    /// Key.
    pub key: String,
    /// Window start (ms, inclusive).
    pub window_start: Time,
    /// Window end (ms, exclusive).
    pub window_end: Time,
    /// Rows in the window.
    pub n: i64,
    /// `[b₀, b₁, …, b_d]`, null when underdetermined.
    pub coef: Option<Vec<f64>>,
    /// Coefficient of determination.
    pub r2: Option<f64>,
    /// Root mean squared residual.
    pub rmse: Option<f64>,
    /// Condition number of the scaled normal matrix.
    pub cond: Option<f64>,
    /// `ok`, `ill_conditioned`, `underdetermined` or `not_finite`.
    pub status: Status,
    /// Whether the window has closed (no record can change it any more).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// How many times late records changed the window after its first emission.
    #[serde(default)]
    pub revision: u32,
    /// `Some("idle")` for a final model whose window was closed because the source was
    /// idle for `--close-after-idle`, not because event time passed it.
    #[serde(default)]
    pub closed_by: Option<String>,
}

/// The `--out` form of a [`ModelLine`]: `revision` only when non-zero. (Written by hand
/// by [`JsonLine::write_json`](crate::sink::JsonLine::write_json); this is its reference.) (The exchanged
/// form keeps every field: bincode, which timely uses between processes, is not
/// self-describing and cannot skip fields.)
#[cfg(test)]
#[derive(Serialize)]
struct ModelJson<'a> {
    key: &'a str,
    window_start: Time,
    window_end: Time,
    n: i64,
    coef: &'a Option<Vec<f64>>,
    r2: Option<f64>,
    rmse: Option<f64>,
    cond: Option<f64>,
    status: Status,
    #[serde(rename = "final")]
    is_final: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    revision: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    closed_by: Option<&'a str>,
}

#[cfg(test)]
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// The bytes serde_json escapes in a string: controls, `"` and `\`.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

impl JsonLine for ModelLine {
    /// By window end, then key, window start, finality and revision.
    fn order(&self, key: &mut OrderKey<'_>) {
        key.time(self.window_end)
            .text(&self.key)
            .time(self.window_start)
            .flag(self.is_final)
            .count(self.revision);
    }

    /// The bytes serde_json writes for `ModelJson` (a unit test holds them equal), with
    /// the field names as literals: only the key and the numbers are formatted, the numbers
    /// by the crates serde_json formats them with (zmij, itoa), straight into `w`.
    fn write_json(&self, w: &mut Vec<u8>) -> std::io::Result<()> {
        use std::io::Write;
        // serde_json writes a float that is not finite as null.
        fn number(w: &mut Vec<u8>, v: Option<f64>) {
            match v {
                Some(v) if v.is_finite() => {
                    w.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes())
                }
                _ => w.extend_from_slice(b"null"),
            }
        }
        fn int(w: &mut Vec<u8>, v: i64) {
            w.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
        /// A JSON string; serde_json's escapes only where one is needed.
        fn text(w: &mut Vec<u8>, s: &str) -> std::io::Result<()> {
            if s.bytes().all(|b| !ESCAPED[b as usize]) {
                w.push(b'"');
                w.extend_from_slice(s.as_bytes());
                w.push(b'"');
                Ok(())
            } else {
                serde_json::to_writer(w, s).map_err(std::io::Error::other)
            }
        }
        w.reserve(160 + self.key.len() + 25 * self.coef.as_ref().map_or(0, Vec::len));
        w.extend_from_slice(b"{\"key\":");
        text(w, &self.key)?;
        w.extend_from_slice(b",\"window_start\":");
        int(w, self.window_start);
        w.extend_from_slice(b",\"window_end\":");
        int(w, self.window_end);
        w.extend_from_slice(b",\"n\":");
        int(w, self.n);
        if self.coef.is_none() && self.r2.is_none() && self.rmse.is_none() && self.cond.is_none() {
            // A window with no model (most are, with many keys): one piece, not eight.
            w.extend_from_slice(b",\"coef\":null,\"r2\":null,\"rmse\":null,\"cond\":null");
        } else {
            w.extend_from_slice(b",\"coef\":");
            match &self.coef {
                Some(coef) => {
                    w.push(b'[');
                    for (i, c) in coef.iter().enumerate() {
                        if i > 0 {
                            w.push(b',');
                        }
                        number(w, Some(*c));
                    }
                    w.push(b']');
                }
                None => w.extend_from_slice(b"null"),
            }
            w.extend_from_slice(b",\"r2\":");
            number(w, self.r2);
            w.extend_from_slice(b",\"rmse\":");
            number(w, self.rmse);
            w.extend_from_slice(b",\"cond\":");
            number(w, self.cond);
        }
        w.extend_from_slice(match self.status {
            Status::Ok => b",\"status\":\"ok\"",
            Status::IllConditioned => b",\"status\":\"ill_conditioned\"",
            Status::Underdetermined => b",\"status\":\"underdetermined\"",
            Status::NotFinite => b",\"status\":\"not_finite\"",
        });
        w.extend_from_slice(if self.is_final {
            b",\"final\":true"
        } else {
            b",\"final\":false"
        });
        if self.revision != 0 {
            write!(w, ",\"revision\":{}", self.revision)?;
        }
        if let Some(by) = &self.closed_by {
            w.extend_from_slice(b",\"closed_by\":");
            text(w, by)?;
        }
        w.push(b'}');
        Ok(())
    }
}

impl ModelLine {
    /// The `--out` line through serde_json, as [`JsonLine::write_json`] writes it by hand.
    #[cfg(test)]
    fn serde_json_line(&self) -> Vec<u8> {
        let view = ModelJson {
            key: &self.key,
            window_start: self.window_start,
            window_end: self.window_end,
            n: self.n,
            coef: &self.coef,
            r2: self.r2,
            rmse: self.rmse,
            cond: self.cond,
            status: self.status,
            is_final: self.is_final,
            revision: self.revision,
            closed_by: self.closed_by.as_deref(),
        };
        serde_json::to_vec(&view).expect("serializable")
    }
}

impl JsonLine for SetAside {
    /// By event time, then key.
    fn order(&self, key: &mut OrderKey<'_>) {
        key.time(self.ts).text(&self.key);
    }

    fn write_json(&self, w: &mut Vec<u8>) -> std::io::Result<()> {
        serde_json::to_writer(w, self).map_err(std::io::Error::other)
    }
}

impl ModelLine {
    /// The emission of `fit`, solved from `stats`, the sums of `key`'s panes in `window`.
    pub(crate) fn new(
        key: &str,
        window: Window,
        n: i64,
        fit: Fit,
        is_final: bool,
        revision: u32,
    ) -> Self {
        ModelLine {
            key: key.to_owned(),
            window_start: window.start,
            window_end: window.end,
            n,
            coef: fit.coef,
            r2: fit.r2,
            rmse: fit.rmse,
            cond: fit.cond,
            status: fit.status,
            is_final,
            revision,
            closed_by: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::sink::JsonLine;

    /// The hand-written `--out` line is byte for byte serde_json's, whatever the key,
    /// numbers and optional fields hold.
    #[test]
    fn model_lines_are_written_as_serde_json_writes_them() {
        use super::{ModelLine, Status};
        let base = ModelLine {
            key: "k".into(),
            window_start: -1_700_000_000_000,
            window_end: 1_700_000_060_000,
            n: 12,
            coef: Some(vec![1.5, -2.0e-300, 3.25e17, 0.1, -0.0, 5e-324]),
            r2: Some(0.999999999999),
            rmse: Some(1e-7),
            cond: Some(12345.678),
            status: Status::Ok,
            is_final: true,
            revision: 0,
            closed_by: None,
        };
        let mut lines = vec![base.clone()];
        for key in [
            "",
            "quote\"back\\slash",
            "tab\tnl\n\u{1}",
            "ключ ✓",
            "a\u{7f}",
        ] {
            lines.push(ModelLine {
                key: key.into(),
                ..base.clone()
            });
        }
        lines.push(ModelLine {
            coef: None,
            r2: None,
            rmse: None,
            cond: None,
            status: Status::Underdetermined,
            is_final: false,
            revision: 3,
            closed_by: Some("idle".into()),
            ..base.clone()
        });
        lines.push(ModelLine {
            coef: Some(vec![f64::NAN, f64::INFINITY, f64::MAX]),
            r2: Some(f64::NEG_INFINITY),
            status: Status::IllConditioned,
            n: -4,
            ..base.clone()
        });
        lines.push(ModelLine {
            coef: Some(vec![]),
            status: Status::NotFinite,
            ..base
        });
        // Every status, finality, revision and closing, with and without a model.
        for status in [
            Status::Ok,
            Status::IllConditioned,
            Status::Underdetermined,
            Status::NotFinite,
        ] {
            for is_final in [true, false] {
                for revision in [0, 1, 4_000_000_000] {
                    for closed_by in [None, Some("idle".to_string())] {
                        let line = ModelLine {
                            status,
                            is_final,
                            revision,
                            closed_by,
                            ..lines[0].clone()
                        };
                        lines.push(ModelLine {
                            coef: None,
                            r2: None,
                            rmse: None,
                            cond: None,
                            ..line.clone()
                        });
                        lines.push(ModelLine {
                            cond: None,
                            ..line.clone()
                        });
                        lines.push(line);
                    }
                }
            }
        }
        for line in &lines {
            let mut ours = Vec::new();
            line.write_json(&mut ours).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(line.serde_json_line()).unwrap()
            );
        }
    }
}
