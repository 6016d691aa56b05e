//! Event-time windows, the panes they are built from, and the watermark that closes them.
//!
//! Records are never assigned to windows one by one. Each record goes into exactly one
//! *pane*, and windows are sums of panes:
//!
//! * tumbling `L`: one pane per window, `[kL, (k+1)L)`;
//! * sliding `L/S`: panes `[kS, (k+1)S)`; the window `[s, s+L)` is the sum of its `L/S`
//!   panes, and the next window adds one pane and drops one;
//! * session `G`: panes are the gap-aligned buckets `[kG, (k+1)G)` *trimmed to the exact
//!   first and last record times they hold* (two records in one bucket are less than `G`
//!   apart, so always in one session); a session is a maximal chain of panes whose
//!   consecutive record times are less than `G` apart, `[first, last + G)`.
//!
//! A record costs one pane update whatever `L/S` is, and differential sees one update per
//! (key, pane) per epoch.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Event time: milliseconds since the Unix epoch.
pub type Time = i64;

/// Parses a duration: a number with an optional unit `ms`, `s`, `m` or `h` (plain = ms).
pub fn parse_duration(text: &str) -> Result<Time, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor = match unit {
        "" | "ms" => 1.0,
        "s" => 1e3,
        "m" | "min" => 60e3,
        "h" => 3600e3,
        "d" => 86400e3,
        _ => {
            return Err(format!(
                "unknown duration unit {unit:?} in {text:?} (use ms, s, m, h)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let ms = (value * factor).round();
    if !(0.0..=1e15).contains(&ms) {
        return Err(format!("duration {text:?} out of range"));
    }
    Ok(ms as Time)
}

/// Formats milliseconds as the shortest exact duration string.
pub fn format_duration(ms: Time) -> String {
    for (unit, f) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms != 0 && ms % f == 0 {
            return format!("{}{unit}", ms / f);
        }
    }
    format!("{ms}ms")
}

/// The kind and size of the windows.
///
/// ```
/// use tributary::{Window, WindowSpec};
///
/// let spec: WindowSpec = "sliding:30s/10s".parse().unwrap();
/// // A record at 12.345 s goes into the pane [10 s, 20 s), which three windows hold.
/// let pane = spec.bucket_start(12_345);
/// assert_eq!(pane, 10_000);
/// let windows: Vec<Window> = spec.windows_of_pane(pane).collect();
/// assert_eq!(windows[0], Window { start: 10_000, end: 40_000 });
/// assert_eq!(windows.len(), 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WindowSpec {
    /// Back-to-back windows of one length.
    Tumbling {
        /// Window length (ms).
        length: Time,
    },
    /// Overlapping windows of `length`, starting every `slide` (`length` a multiple of it).
    Sliding {
        /// Window length (ms).
        length: Time,
        /// Distance between window starts (ms).
        slide: Time,
    },
    /// Per-key runs of records less than `gap` apart.
    Session {
        /// Inactivity gap that ends a session (ms).
        gap: Time,
    },
}

impl FromStr for WindowSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, args) = text
            .split_once(':')
            .ok_or_else(|| format!("window {text:?}: expected KIND:ARGS, e.g. sliding:60s/10s"))?;
        let spec = match kind {
            "tumbling" => WindowSpec::Tumbling {
                length: parse_duration(args)?,
            },
            "sliding" => {
                let (l, s) = args
                    .split_once('/')
                    .ok_or_else(|| format!("window {text:?}: expected sliding:LENGTH/SLIDE"))?;
                WindowSpec::Sliding {
                    length: parse_duration(l)?,
                    slide: parse_duration(s)?,
                }
            }
            "session" => WindowSpec::Session {
                gap: parse_duration(args)?,
            },
            _ => {
                return Err(format!(
                    "window {text:?}: kind must be tumbling, sliding or session"
                ));
            }
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WindowSpec::Tumbling { length } => write!(f, "tumbling:{}", format_duration(length)),
            WindowSpec::Sliding { length, slide } => write!(
                f,
                "sliding:{}/{}",
                format_duration(length),
                format_duration(slide)
            ),
            WindowSpec::Session { gap } => write!(f, "session:{}", format_duration(gap)),
        }
    }
}

/// A bucket of records of one key: `[start, end)` for aligned panes, or, for sessions,
/// `start` = first and `end` = last record time + 1 within a gap-aligned bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pane {
    /// Inclusive lower bound.
    pub start: Time,
    /// Exclusive upper bound.
    pub end: Time,
}

/// A window `[start, end)` of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    /// Inclusive start (ms).
    pub start: Time,
    /// Exclusive end (ms).
    pub end: Time,
}

impl WindowSpec {
    /// Checks the sizes: positive, and a sliding length a multiple of its slide.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            WindowSpec::Tumbling { length: l } | WindowSpec::Session { gap: l } if l <= 0 => {
                Err(format!("window {self}: size must be positive"))
            }
            WindowSpec::Sliding { length, slide } if slide <= 0 || length <= 0 => {
                Err(format!("window {self}: length and slide must be positive"))
            }
            WindowSpec::Sliding { length, slide } if length % slide != 0 => Err(format!(
                "window {self}: length must be a multiple of the slide"
            )),
            _ => Ok(()),
        }
    }

    /// The width of the aligned bucket a record falls into (`slide`, `length` or `gap`).
    pub fn bucket(&self) -> Time {
        match *self {
            WindowSpec::Tumbling { length } => length,
            WindowSpec::Sliding { slide, .. } => slide,
            WindowSpec::Session { gap } => gap,
        }
    }

    /// The length of aligned windows (tumbling, sliding); `None` for sessions, whose
    /// length depends on their records.
    pub fn aligned_length(&self) -> Option<Time> {
        match *self {
            WindowSpec::Tumbling { length } | WindowSpec::Sliding { length, .. } => Some(length),
            WindowSpec::Session { .. } => None,
        }
    }

    /// Whether panes are trimmed to their records' times (sessions).
    pub fn is_session(&self) -> bool {
        matches!(self, WindowSpec::Session { .. })
    }

    /// The start of the aligned bucket holding `t`.
    #[inline]
    pub fn bucket_start(&self, t: Time) -> Time {
        let b = self.bucket();
        t.div_euclid(b) * b
    }

    /// The watermark at which a record at `t` becomes late: the end of the *earliest*
    /// window it belongs to (tumbling, sliding), or `t + 1` for sessions (a record behind
    /// the watermark could merge into a session already closed). A record is either in
    /// all of its windows or set aside as late, never in some of them only.
    #[inline]
    pub fn late_at(&self, t: Time) -> Time {
        self.late_at_in(t, self.bucket_start(t))
    }

    /// [`late_at`](Self::late_at), given the start of `t`'s bucket.
    #[inline]
    pub fn late_at_in(&self, t: Time, bucket_start: Time) -> Time {
        match *self {
            WindowSpec::Tumbling { length } => bucket_start + length,
            WindowSpec::Sliding { slide, .. } => bucket_start + slide,
            WindowSpec::Session { .. } => t.saturating_add(1),
        }
    }

    /// The watermark at which a pane can leave the state: when the last window holding it
    /// has closed (for sessions, the engine decides this per session).
    #[inline]
    pub fn pane_expires_at(&self, pane: Pane) -> Time {
        match *self {
            WindowSpec::Tumbling { length } | WindowSpec::Sliding { length, .. } => {
                pane.start + length
            }
            WindowSpec::Session { gap } => pane.end - 1 + gap,
        }
    }

    /// The end of the first window holding `pane`: for sessions, where the engine next
    /// looks at it ([`pane_expires_at`](Self::pane_expires_at)).
    #[inline]
    pub fn first_end(&self, pane: Pane) -> Time {
        match *self {
            WindowSpec::Tumbling { length } => pane.start + length,
            WindowSpec::Sliding { slide, .. } => pane.start + slide,
            WindowSpec::Session { .. } => self.pane_expires_at(pane),
        }
    }

    /// The windows that contain the aligned pane starting at `pane_start` (not sessions).
    pub fn windows_of_pane(&self, pane_start: Time) -> impl Iterator<Item = Window> + use<> {
        let (length, slide) = match *self {
            WindowSpec::Tumbling { length } => (length, length),
            WindowSpec::Sliding { length, slide } => (length, slide),
            WindowSpec::Session { .. } => (0, 1),
        };
        (0..length / slide).map(move |i| {
            let start = pane_start - i * slide;
            Window {
                start,
                end: start + length,
            }
        })
    }

    /// The aligned pane starts making up `window` (not sessions).
    pub fn panes_of_window(&self, window: Window) -> impl Iterator<Item = Pane> + use<> {
        let slide = self.bucket();
        let count = if self.is_session() {
            0
        } else {
            (window.end - window.start) / slide
        };
        (0..count).map(move |i| Pane {
            start: window.start + i * slide,
            end: window.start + (i + 1) * slide,
        })
    }

    /// Groups one key's session panes, sorted by start, into sessions: returns each
    /// session's window and the index range of its panes in `panes`.
    pub fn sessions(&self, panes: &[Pane]) -> Vec<(Window, std::ops::Range<usize>)> {
        let gap = self.bucket();
        let mut out = Vec::new();
        let mut i = 0;
        while i < panes.len() {
            let first = i;
            let start = panes[i].start;
            let mut last = panes[i].end - 1;
            i += 1;
            while i < panes.len() && panes[i].start - last < gap {
                last = last.max(panes[i].end - 1);
                i += 1;
            }
            out.push((
                Window {
                    start,
                    end: last + gap,
                },
                first..i,
            ));
        }
        out
    }
}

/// The event-time progress of one input partition.
///
/// The watermark is the largest event time seen minus the allowed lateness. A single
/// record may advance the largest time seen by at most `max_jump`: a record further
/// ahead than that is set aside (counted, written to the late output) instead of
/// dragging the watermark ahead and making every later record late. The first record of
/// a partition sets the starting point. For live sources a whole batch (one POST, TCP
/// chunk or followed-file read) is bounded the same way, from where the largest time
/// stood before it ([`Watermark::begin_batch`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Watermark {
    /// Allowed lateness (ms).
    pub lateness: Time,
    /// Largest advance of the watermark by one record (ms).
    pub max_jump: Time,
    /// Largest event time admitted so far (`Time::MIN` before the first record).
    pub max_seen: Time,
    /// Where `max_seen` stood when the current batch began (see
    /// [`Watermark::begin_batch`]); `None` when batches are not bounded.
    #[serde(default)]
    pub anchor: Option<Time>,
}

/// What to do with a record, given the watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// In time: fold it into its pane.
    Admit,
    /// Every window it could join has closed.
    Late,
    /// Further ahead of the stream than `max_jump` allows.
    TooFarAhead,
}

impl Admission {
    /// The reason written with a record set aside.
    pub fn reason(self) -> &'static str {
        match self {
            Admission::Admit => "admitted",
            Admission::Late => "late",
            Admission::TooFarAhead => "too_far_ahead",
        }
    }
}

impl Watermark {
    /// A partition that has seen nothing yet.
    pub fn new(lateness: Time, max_jump: Time) -> Self {
        Watermark {
            lateness,
            max_jump,
            max_seen: Time::MIN,
            anchor: None,
        }
    }

    /// Begins a batch whose records, together, may advance the largest time seen by at
    /// most `max_jump` past where it stands now (live sources: one request or chunk
    /// cannot drag the watermark far ahead one record at a time). Without it (files
    /// read once, the generator) the bound is per record.
    #[inline]
    pub fn begin_batch(&mut self) {
        self.anchor = Some(self.max_seen);
    }

    /// The current watermark: no window ending at or before it changes any more.
    #[inline]
    pub fn current(&self) -> Time {
        self.max_seen.saturating_sub(self.lateness)
    }

    /// Decides on a record at `t` that becomes late at watermark `late_at` (see
    /// [`WindowSpec::late_at`]), and advances the watermark when it is admitted.
    #[inline]
    pub fn admit(&mut self, t: Time, late_at: Time) -> Admission {
        // Within a bounded batch, the bound is from where the batch began (or from its
        // first record, for a partition's first batch).
        let from = match self.anchor {
            Some(Time::MIN) | None => self.max_seen,
            Some(anchor) => anchor,
        };
        if from != Time::MIN && t > from.saturating_add(self.max_jump) {
            return Admission::TooFarAhead;
        }
        if late_at <= self.current() {
            return Admission::Late;
        }
        if self.anchor == Some(Time::MIN) {
            // A partition's first batch is bounded from its first record.
            self.anchor = Some(t);
        }
        if t > self.max_seen {
            self.max_seen = t;
        }
        Admission::Admit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A staircase batch (each record `max_jump` after the one before) moves a bounded
    /// partition by at most `max_jump`; unbounded, it climbs the whole staircase.
    #[test]
    fn a_batch_moves_the_watermark_at_most_max_jump() {
        let hour = 3_600_000;
        let staircase = |w: &mut Watermark, from: Time| -> usize {
            (0..100)
                .filter(|i| w.admit(from + i * hour, Time::MAX) == Admission::Admit)
                .count()
        };
        let mut bounded = Watermark::new(0, hour);
        bounded.begin_batch();
        assert_eq!(
            staircase(&mut bounded, 0),
            2,
            "the first record, then one hour"
        );
        assert_eq!(bounded.max_seen, hour);
        bounded.begin_batch();
        assert_eq!(staircase(&mut bounded, hour), 2);
        assert_eq!(bounded.max_seen, 2 * hour);
        // Ordinary records after it are in time.
        bounded.begin_batch();
        assert_eq!(bounded.admit(2 * hour - 1000, 3 * hour), Admission::Admit);
        let mut per_record = Watermark::new(0, hour);
        assert_eq!(staircase(&mut per_record, 0), 100);
    }

    #[test]
    fn parses_and_prints_specs() {
        for text in [
            "tumbling:1m",
            "sliding:1m/10s",
            "session:30s",
            "sliding:1h/250ms",
        ] {
            let spec: WindowSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        assert!("sliding:60s/7s".parse::<WindowSpec>().is_err());
        assert!("hopping:1s".parse::<WindowSpec>().is_err());
        assert!("tumbling:0s".parse::<WindowSpec>().is_err());
        assert_eq!(parse_duration("1.5s"), Ok(1500));
    }

    #[test]
    fn sliding_panes_and_windows_agree() {
        let spec: WindowSpec = "sliding:30s/10s".parse().unwrap();
        let t = 1_700_000_012_345;
        let pane = spec.bucket_start(t);
        assert_eq!(pane, 1_700_000_010_000);
        let windows: Vec<_> = spec.windows_of_pane(pane).collect();
        assert_eq!(windows.len(), 3);
        for w in &windows {
            assert!(w.start <= t && t < w.end);
            assert!(spec.panes_of_window(*w).any(|p| p.start == pane));
        }
        assert_eq!(spec.late_at(t), pane + 10_000);
        assert_eq!(
            spec.pane_expires_at(Pane {
                start: pane,
                end: pane + 10_000
            }),
            pane + 30_000
        );
    }

    #[test]
    fn negative_times_align_downwards() {
        let spec: WindowSpec = "tumbling:10ms".parse().unwrap();
        assert_eq!(spec.bucket_start(-1), -10);
    }

    #[test]
    fn sessions_chain_panes_closer_than_the_gap() {
        let spec: WindowSpec = "session:10ms".parse().unwrap();
        let panes = [
            Pane { start: 0, end: 5 },
            Pane { start: 13, end: 14 }, // 13 − 4 = 9 < 10: same session
            Pane { start: 23, end: 24 }, // 23 − 13 = 10: new session
        ];
        let s = spec.sessions(&panes);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], (Window { start: 0, end: 23 }, 0..2));
        assert_eq!(s[1], (Window { start: 23, end: 33 }, 2..3));
    }

    #[test]
    fn watermark_bounds_jumps_and_flags_late_records() {
        let mut wm = Watermark::new(5, 3_600_000);
        assert_eq!(wm.admit(1000, 1010), Admission::Admit);
        assert_eq!(
            wm.admit(4_000_000_000, 4_000_000_010),
            Admission::TooFarAhead
        );
        assert_eq!(wm.current(), 995);
        assert_eq!(wm.admit(1001, 1010), Admission::Admit);
        assert_eq!(wm.admit(980, 990), Admission::Late);
    }
}
