//! Keys as the dataflow carries them: sorted, hashed and compared as one machine word.
//!
//! A record's key is text, but the dataflow hashes, compares and sorts keys all the time
//! (the exchange by key, the windows operator's per-key state and agenda). A [`Key`] of at
//! most 15 bytes is its bytes and its length in one 128-bit word, so those operations
//! compare integers and a key costs no allocation. A longer key keeps its text (shared,
//! allocated once) beside a 120-bit hash of it in the word: words still decide nearly every
//! comparison, and the text settles the rest, so two different keys are never equal
//! whatever their hashes.
//!
//! ```
//! use tributary::Key;
//!
//! let short = Key::new("sensor-17");
//! assert_eq!(short.as_str(), "sensor-17");
//! assert!(short == *"sensor-17");
//! let long = Key::new("a key of more than fifteen bytes");
//! assert_eq!(long.to_string(), "a key of more than fifteen bytes");
//! assert_ne!(short, long);
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use differential_dataflow::Hashable;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The last byte of a long key's word (a short key's holds its length, at most 15).
const LONG: u8 = 0xff;

/// A record's key: a short key in one word, a long one as shared text beside its hash.
///
/// Equality is equality of the text. The order is that of the words (then of the text for
/// long keys whose hashes collide): a total order, the same in every process of a cluster,
/// but not the alphabetical one.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// Short key: its bytes from the first, then zeros, its length in the last byte. Long
    /// key: 15 bytes of the hash of its text, then [`LONG`].
    word: [u8; 16],
    /// The text of a long key.
    long: Option<Arc<str>>,
}

impl Key {
    /// The key of `text`.
    #[inline]
    pub fn new(text: &str) -> Self {
        match pack(text.as_bytes()) {
            // SAFETY: the code of a str's bytes.
            Some(code) => unsafe { Key::short(code) },
            None => Key::long(Arc::from(text)),
        }
    }

    /// The key whose [`pack`] code is `code`.
    ///
    /// # Safety
    ///
    /// `code` must be the [`pack`] code of the bytes of a `str` (so UTF-8):
    /// [`as_str`](Key::as_str) takes them as text without checking them again.
    #[inline]
    pub(crate) unsafe fn short(code: u128) -> Self {
        Key {
            word: code.to_le_bytes(),
            long: None,
        }
    }

    /// A key of more than 15 bytes, from its text.
    fn long(text: Arc<str>) -> Self {
        // Two hashes with different salts: 120 bits, the same in every process.
        let low = (1u8, &*text).hashed();
        let high = (2u8, &*text).hashed();
        let mut word = [0; 16];
        word[..8].copy_from_slice(&low.to_le_bytes());
        word[8..15].copy_from_slice(&high.to_le_bytes()[..7]);
        word[15] = LONG;
        Key {
            word,
            long: Some(text),
        }
    }

    /// The key's text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.long {
            Some(text) => text,
            None => {
                let len = self.word[15] as usize;
                debug_assert!(std::str::from_utf8(&self.word[..len]).is_ok());
                // SAFETY: a short key's word holds the bytes of a str (`Key::short`'s
                // contract), and a word is never changed.
                unsafe { std::str::from_utf8_unchecked(&self.word[..len]) }
            }
        }
    }

    /// The key's word as an integer: what orders and hashes it.
    #[inline]
    fn word(&self) -> u128 {
        u128::from_le_bytes(self.word)
    }

    /// An order that is alphabetical (byte by byte, a text before the longer texts it
    /// begins) among short keys without zero bytes: the order `--out` writes keys in, so
    /// that a worker's lines come nearly sorted when its keys are taken in this order.
    /// Long keys are ordered by their hash, after every short key.
    #[inline]
    pub(crate) fn text_order(&self) -> u128 {
        u128::from_be_bytes(self.word)
    }
}

/// Up to 15 bytes as one integer: the bytes from the lowest, the length in the top byte
/// (so `"a"` and `"a\0"` differ); `None` for a longer key. Two loads that may overlap, not
/// a copy loop.
#[inline]
pub(crate) fn pack(b: &[u8]) -> Option<u128> {
    let n = b.len();
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes")) as u128;
    let half = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as u128;
    // Overlapping loads put equal bytes in the same places, so `|` keeps them as they are.
    let bytes = match n {
        16.. => return None,
        8.. => word(0) | word(n - 8) << (8 * (n - 8)),
        4.. => half(0) | half(n - 4) << (8 * (n - 4)),
        1.. => {
            b[0] as u128 | (b[n / 2] as u128) << (8 * (n / 2)) | (b[n - 1] as u128) << (8 * (n - 1))
        }
        0 => 0,
    };
    Some(bytes | (n as u128) << 120)
}

/// Sorts `keys` by [`Key::text_order`] (then by [`Ord`] where words tie: long keys whose
/// hashes collide) and drops repeats: the order the windows operator evaluates due keys
/// in.
///
/// From 32 768 keys, a radix sort of the words, a byte at a time from the least
/// significant, that skips the bytes every key shares (keys `k0` … `k999999` differ in
/// seven of sixteen): at 100 000 keys and more, a comparison sort of the due keys was 6 %
/// of a run's instructions, and the radix sort is half of that. Below, its fixed costs
/// (sixteen histograms, the keys moved out and back) make it no faster.
pub(crate) fn sort_in_text_order(keys: &mut Vec<Key>) {
    sort_in_text_order_from(keys, 1 << 15);
}

/// [`sort_in_text_order`], by radix from `radix_from` keys.
fn sort_in_text_order_from(keys: &mut Vec<Key>, radix_from: usize) {
    let order = |a: &Key, b: &Key| (a.text_order().cmp(&b.text_order())).then_with(|| a.cmp(b));
    if keys.len() < radix_from {
        keys.sort_unstable_by(order);
        keys.dedup();
        return;
    }
    let mut words: Vec<(u128, usize)> = (keys.iter().enumerate())
        .map(|(i, key)| (key.text_order(), i))
        .collect();
    let mut counts = vec![[0u32; 256]; 16];
    for &(word, _) in &words {
        for (count, digit) in counts.iter_mut().zip(word.to_le_bytes()) {
            count[digit as usize] += 1;
        }
    }
    let mut moved = vec![(0, 0); words.len()];
    for (byte, count) in counts.iter().enumerate() {
        if count.iter().any(|&c| c as usize == words.len()) {
            continue; // every key has the same byte here
        }
        let mut at = [0u32; 256];
        let mut sum = 0;
        for (at, &c) in at.iter_mut().zip(count) {
            *at = sum;
            sum += c;
        }
        // Stable: keys with equal bytes here keep their order from the bytes below.
        for &(word, i) in &words {
            let digit = word.to_le_bytes()[byte] as usize;
            moved[at[digit] as usize] = (word, i);
            at[digit] += 1;
        }
        std::mem::swap(&mut words, &mut moved);
    }
    let mut slots: Vec<Option<Key>> = keys.drain(..).map(Some).collect();
    keys.extend((words.iter()).map(|&(_, i)| slots[i].take().expect("each key once")));
    // Equal words: the same short key, or long keys to be told apart by their text.
    let mut from = 0;
    while from < keys.len() {
        let word = keys[from].word;
        let to = from + keys[from..].iter().take_while(|k| k.word == word).count();
        if to - from > 1 {
            keys[from..to].sort_unstable_by(order);
        }
        from = to;
    }
    keys.dedup();
}

impl Ord for Key {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        self.word()
            .cmp(&other.word())
            .then_with(|| self.long.cmp(&other.long))
    }
}

impl PartialOrd for Key {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Hashes the word only: equal keys have equal words. This is also the hash that routes
/// a key to its worker (differential's [`Hashable`] of a `Hash` type).
impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.word());
    }
}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Self {
        Key::new(text)
    }
}

impl From<String> for Key {
    fn from(text: String) -> Self {
        match pack(text.as_bytes()) {
            // SAFETY: the code of a str's bytes.
            Some(code) => unsafe { Key::short(code) },
            None => Key::long(Arc::from(text)),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// As its text, so that processes (and formats) see a key, not its encoding.
impl Serialize for Key {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Key::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_keys_of_every_length_round_trip_and_differ_from_their_padding() {
        let text = "abcdefghijklmnopqrstu";
        for n in 0..=text.len() {
            let key = Key::new(&text[..n]);
            assert_eq!(key.as_str(), &text[..n]);
            assert_eq!(key.long.is_some(), n > 15, "length {n}");
        }
        assert_ne!(Key::new("a"), Key::new("a\0"));
        assert_ne!(Key::new(""), Key::new("\0"));
        assert_eq!(Key::new("é—ü").as_str(), "é—ü");
    }

    #[test]
    fn long_keys_whose_words_collide_are_still_told_apart() {
        let (a, b) = (
            Key::new("first long key, sixteen+"),
            Key::new("second long key, 16+"),
        );
        // Forge a collision of the words: the text must still decide.
        let forged = Key {
            word: a.word,
            long: b.long.clone(),
        };
        assert_ne!(a, forged);
        assert_ne!(a.cmp(&forged), Ordering::Equal);
        assert_eq!(a.cmp(&forged), forged.cmp(&a).reverse());
    }

    #[test]
    fn serialises_as_its_text() {
        let key = Key::new("k-42");
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"k-42\"");
        let back: Key = serde_json::from_str("\"a long key, more than 15 bytes\"").unwrap();
        assert_eq!(back, Key::new("a long key, more than 15 bytes"));
    }

    /// The radix sort gives the comparison sort's order and drops repeats, with keys that
    /// share bytes, repeat, are long, or have forged colliding words.
    #[test]
    fn keys_sort_in_text_order_by_radix_as_by_comparison() {
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let long = Key::new("a long key that hashes, sixteen+");
        let forged = Key {
            word: long.word,
            long: Some(Arc::from("another long key, forged to collide")),
        };
        for len in [0, 1, 300, 512, 513, 2000, 20_000] {
            let mut keys: Vec<Key> = (0..len)
                .map(|_| match next() % 10 {
                    0 => long.clone(),
                    1 => forged.clone(),
                    2 => Key::new(&format!("a long key number {}", next() % 50)),
                    3 => Key::new(&format!("{}\0z", next() % 7)),
                    _ => Key::new(&format!("k{}", next() % (len as u64 / 3 + 1))),
                })
                .collect();
            let mut expected = keys.clone();
            expected.sort_unstable_by(|a, b| {
                (a.text_order().cmp(&b.text_order())).then_with(|| a.cmp(b))
            });
            expected.dedup();
            // By radix from 512 keys here, so that the test's sizes take both ways.
            sort_in_text_order_from(&mut keys, 512);
            assert_eq!(keys, expected, "{len} keys");
            for pair in keys.windows(2) {
                assert!(pair[0] != pair[1]);
            }
        }
    }

    proptest! {
        #[test]
        fn equality_is_equality_of_text_and_the_order_is_total(a in ".{0,24}", b in ".{0,24}") {
            let (ka, kb) = (Key::new(&a), Key::new(&b));
            prop_assert_eq!(ka.as_str(), a.as_str());
            prop_assert_eq!(ka == kb, a == b);
            prop_assert_eq!(ka.cmp(&kb) == Ordering::Equal, a == b);
            prop_assert_eq!(ka.cmp(&kb), kb.cmp(&ka).reverse());
            if a == b {
                prop_assert_eq!(ka.hashed(), kb.hashed());
            }
            prop_assert_eq!(Key::from(a.clone()), ka);
        }
    }
}
