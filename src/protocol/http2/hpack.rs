//! The HPACK decoder (RFC 7541) of one direction and its dynamic table: exact while the table
//! is known, tolerant (fields it cannot know are reported missing) once part of it is not. Pure.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use super::huffman::huffman_decode;

/// SETTINGS_HEADER_TABLE_SIZE until the receiver changes it.
const DEFAULT_TABLE_SIZE: usize = 4096;
/// Dynamic-table bytes kept per direction, whatever the peers negotiate: bounds memory.
pub(super) const TABLE_SIZE_CAP: usize = 64 * 1024;
/// Bytes RFC 7541 adds to every dynamic-table entry's name and value lengths.
const ENTRY_OVERHEAD: usize = 32;
/// Fields of one header block looked at for the record; the rest are decoded only to keep
/// the HPACK table in step (each field costs at least one byte, so this bounds the work a
/// block of repeated indexed fields can ask for).
const MAX_FIELDS_PER_BLOCK: usize = 1024;

/// What decoding one header block found.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Outcome {
    /// Fields whose name could not be known.
    pub(super) unknown: u32,
    /// The block held more than `MAX_FIELDS_PER_BLOCK` fields: the rest were decoded for
    /// the table's sake but not looked at.
    pub(super) overworked: bool,
    /// The block was malformed (or did not match the table we hold).
    pub(super) error: bool,
    /// Decoding stopped being exact: part of the table is unknown from now on.
    pub(super) downgraded: bool,
}

/// The HPACK decoder (RFC 7541) of one direction; it survives not knowing part of the table.
///
/// The entries inserted since the state was last known are kept, newest first, in `entries`;
/// older entries of unknown content may follow them (`tail_unknown`). Insertions push at the
/// front and evictions pop at the back, so our front always matches the peer's table: keeping
/// entries the peer already evicted is harmless (it never refers to them), evicting entries the
/// peer still has is not, and marks the tail unknown. With the tail known this is an ordinary,
/// exact decoder.
pub(super) struct Hpack {
    entries: VecDeque<Entry>,
    /// Lower bound of the peer's size for `entries` (names not known count as empty).
    pub(super) size: usize,
    tail_unknown: bool,
    /// The table's maximum size, when known (protocol default, or told by a size update).
    max: Option<usize>,
    /// Largest SETTINGS_HEADER_TABLE_SIZE the receiver announced.
    pub(super) announced: usize,
}

/// A dynamic-table entry: its name is None when it came from an entry we never saw. Names
/// are shared: a literal that reuses an entry's name (up to the table's size) costs a
/// reference, not a copy.
type Entry = (Option<Arc<[u8]>>, Box<[u8]>);

/// A field name found in a table.
#[derive(Clone, Copy)]
enum Name<'a> {
    Static(&'static [u8]),
    Shared(&'a Arc<[u8]>),
}

impl Name<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Name::Static(b) => b,
            Name::Shared(a) => a,
        }
    }

    fn to_shared(self) -> Arc<[u8]> {
        match self {
            Name::Static(b) => Arc::from(b),
            Name::Shared(a) => Arc::clone(a),
        }
    }
}

enum Slot<'a> {
    Known(Option<Name<'a>>, &'a [u8]),
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Truncated,
    Malformed,
}

impl Hpack {
    /// At the connection start: the table is empty and its size the protocol default.
    pub(super) fn exact() -> Self {
        Hpack {
            entries: VecDeque::new(),
            size: 0,
            tail_unknown: false,
            max: Some(DEFAULT_TABLE_SIZE),
            announced: DEFAULT_TABLE_SIZE,
        }
    }

    /// Joined mid-stream: nothing is known.
    pub(super) fn lost() -> Self {
        Hpack {
            tail_unknown: true,
            max: None,
            ..Hpack::exact()
        }
    }

    /// Bytes the table holds, as the protocol counts them (at most `TABLE_SIZE_CAP`).
    pub(super) fn held(&self) -> usize {
        self.size
    }

    pub(super) fn announce(&mut self, size: usize) {
        self.announced = self.announced.max(size);
    }

    /// Table changes were missed: forget what is known. Returns whether it was exact.
    pub(super) fn lose(&mut self) -> bool {
        let was_exact = !self.tail_unknown;
        self.entries.clear();
        self.size = 0;
        self.tail_unknown = true;
        self.max = None;
        was_exact
    }

    /// The maximum size is known and our table follows it exactly.
    fn exact_limit(&self) -> bool {
        self.max.is_some_and(|m| m <= TABLE_SIZE_CAP)
    }

    fn capacity(&self) -> usize {
        match self.max {
            Some(m) => m.min(TABLE_SIZE_CAP),
            None => self.announced.clamp(DEFAULT_TABLE_SIZE, TABLE_SIZE_CAP),
        }
    }

    /// Decode a header block; `truncated`: its tail is missing, so the table is lost after it.
    pub(super) fn decode(
        &mut self,
        buf: &[u8],
        truncated: bool,
        sink: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Outcome {
        let was_exact = !self.tail_unknown;
        let mut out = Outcome::default();
        let mut fields = 0usize;
        let mut overworked = false;
        let mut capped = |n: &[u8], v: &[u8]| {
            if fields < MAX_FIELDS_PER_BLOCK {
                fields += 1;
                sink(n, v);
            } else {
                overworked = true;
            }
        };
        let mut pos = 0;
        while pos < buf.len() {
            match self.field(&buf[pos..], &mut capped, &mut out) {
                Ok(n) => pos += n,
                Err(Stop::Truncated) if truncated => break,
                Err(_) => {
                    out.error = true;
                    break;
                }
            }
        }
        if out.error || truncated {
            self.lose();
        }
        out.overworked = overworked;
        out.downgraded = was_exact && self.tail_unknown;
        out
    }

    fn field(
        &mut self,
        b: &[u8],
        sink: &mut dyn FnMut(&[u8], &[u8]),
        out: &mut Outcome,
    ) -> Result<usize, Stop> {
        let first = b[0];
        if first & 0x80 != 0 {
            let (index, n) = integer(b, 7)?;
            match self.slot(index)? {
                Slot::Known(Some(name), value) => sink(name.bytes(), value),
                _ => out.unknown += 1,
            }
            return Ok(n);
        }
        if first & 0xe0 == 0x20 {
            let (size, n) = integer(b, 5)?;
            self.resize(size);
            return Ok(n);
        }
        let insert = first & 0x40 != 0;
        let (index, mut n) = integer(b, if insert { 6 } else { 4 })?;
        let literal = if index == 0 {
            let (s, k) = string(&b[n..])?;
            n += k;
            Some(s)
        } else {
            // Checked before the value, as the field is read.
            self.slot(index)?;
            None
        };
        let (value, k) = string(&b[n..])?;
        n += k;
        // The name is borrowed from the block or the table; a copy (or a shared reference)
        // is made only for an entry to insert.
        let kept_name = match &literal {
            Some(name) => {
                sink(name, &value);
                insert.then(|| Arc::from(&name[..]))
            }
            None => match self.slot(index)? {
                Slot::Known(Some(name), _) => {
                    sink(name.bytes(), &value);
                    insert.then(|| name.to_shared())
                }
                _ => {
                    out.unknown += 1;
                    None
                }
            },
        };
        if insert {
            self.insert(kept_name, value.into_owned());
        }
        Ok(n)
    }

    fn slot(&self, index: usize) -> Result<Slot<'_>, Stop> {
        if index == 0 {
            return Err(Stop::Malformed);
        }
        if let Some(&(name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok(Slot::Known(
                Some(Name::Static(name.as_bytes())),
                value.as_bytes(),
            ));
        }
        let at = index - STATIC_TABLE.len() - 1;
        if let Some((name, value)) = self.entries.get(at) {
            return Ok(Slot::Known(name.as_ref().map(Name::Shared), value));
        }
        // No table holds more entries than its size allows.
        let bound = self
            .max
            .unwrap_or(0)
            .max(self.announced)
            .max(TABLE_SIZE_CAP)
            / ENTRY_OVERHEAD;
        if self.tail_unknown && at < bound {
            Ok(Slot::Unknown)
        } else {
            Err(Stop::Malformed)
        }
    }

    fn insert(&mut self, name: Option<Arc<[u8]>>, value: Vec<u8>) {
        let size = name.as_ref().map_or(0, |n| n.len()) + value.len() + ENTRY_OVERHEAD;
        if size > self.capacity() {
            // Bigger than the table: the peer's table is now empty, if we know its size.
            self.entries.clear();
            self.size = 0;
            self.tail_unknown = !self.exact_limit();
            return;
        }
        self.entries.push_front((name, value.into_boxed_slice()));
        self.size += size;
        self.evict();
    }

    fn resize(&mut self, max: usize) {
        self.max = Some(max);
        self.evict();
    }

    fn evict(&mut self) {
        let cap = self.capacity();
        let mut evicted = false;
        while self.size > cap {
            let Some((name, value)) = self.entries.pop_back() else {
                self.size = 0;
                break;
            };
            self.size -= name.as_ref().map_or(0, |n| n.len()) + value.len() + ENTRY_OVERHEAD;
            evicted = true;
        }
        if evicted && !self.exact_limit() {
            // We may have dropped entries the peer keeps (its table is larger than we keep).
            self.tail_unknown = true;
        }
        if self.exact_limit() && self.max.is_some_and(|m| self.size + ENTRY_OVERHEAD > m) {
            // No room is left for any entry we do not know.
            self.tail_unknown = false;
        }
    }
}

/// RFC 7541 §5.1 integer with an n-bit prefix; values above 2^28 are refused.
fn integer(b: &[u8], prefix: u8) -> Result<(usize, usize), Stop> {
    let mask = (1u8 << prefix) - 1;
    let first = *b.first().ok_or(Stop::Truncated)?;
    let value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok((value, 1));
    }
    let mut value = value;
    for (k, &c) in b[1..].iter().enumerate() {
        if k == 4 {
            return Err(Stop::Malformed);
        }
        value += usize::from(c & 0x7f) << (7 * k);
        if c & 0x80 == 0 {
            return Ok((value, k + 2));
        }
    }
    Err(Stop::Truncated)
}

/// RFC 7541 §5.2 string literal, raw or Huffman-coded.
fn string(b: &[u8]) -> Result<(Cow<'_, [u8]>, usize), Stop> {
    let (len, n) = integer(b, 7)?;
    let end = n + len;
    let raw = b.get(n..end).ok_or(Stop::Truncated)?;
    if b[0] & 0x80 == 0 {
        return Ok((Cow::Borrowed(raw), end));
    }
    huffman_decode(raw)
        .map(|v| (Cow::Owned(v), end))
        .ok_or(Stop::Malformed)
}

/// RFC 7541 Appendix A.
static STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http2::huffman::huffman_encode;
    use crate::protocol::http2::test_util::XorShift;

    #[test]
    fn tolerant_decoder_rules() {
        let mut tol = Hpack::lost();
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut decode = |tol: &mut Hpack, b: &[u8], trunc: bool| {
            fields.clear();
            let mut f = Vec::new();
            let o = tol.decode(b, trunc, &mut |n, v| {
                f.push((
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ))
            });
            (o, f)
        };
        // RFC 7541 C.4.1: Huffman-coded request.
        let c41 = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let (o, f) = decode(&mut tol, &c41, false);
        assert_eq!((o.unknown, o.error), (0, false));
        assert_eq!(f[3], (":authority".into(), "www.example.com".into()));
        // 62 is the entry just added; 63 may be an older unknown one.
        let (o, f) = decode(&mut tol, &[0xbe, 0xbf], false);
        assert_eq!((o.unknown, o.error), (1, false));
        assert_eq!(f, vec![(":authority".into(), "www.example.com".into())]);
        // A literal naming an unknown entry: name unknown, inserted as such.
        let (o, _) = decode(&mut tol, &[0x7f, 0x02, 1, b'v'], false);
        assert_eq!(o.unknown, 1);
        let (o, f) = decode(&mut tol, &[0xbf], false);
        assert_eq!((o.unknown, f.len()), (0, 1));
        // A size update to 0 empties the table for sure: nothing is unknown any more.
        let (o, _) = decode(&mut tol, &[0x20, 0x3f, 0xe1, 0x1f, 0x82], false);
        assert!(!o.error);
        assert!(!tol.tail_unknown && tol.entries.is_empty());
        let (o, _) = decode(&mut tol, &[0xbe], false);
        assert!(o.error);
        // Truncated input: fields before the cut are kept, no error.
        let mut lost = Hpack::lost();
        let (o, f) = decode(&mut lost, &c41[..8], true);
        assert!(!o.error && f.len() == 3);
        let (o, _) = decode(&mut lost, &c41[..8], false);
        assert!(o.error);
        // Eviction under an exact limit keeps the tail known.
        let mut t2 = Hpack::lost();
        let mut b = vec![0x3f, 0x21]; // size 64
        b.extend_from_slice(&[0x40, 1, b'a', 1, b'1', 0x40, 1, b'b', 1, b'2']);
        let (o, _) = decode(&mut t2, &b, false);
        assert!(!o.error);
        assert_eq!(t2.entries.len(), 1);
        assert!(!t2.tail_unknown);
        assert_eq!(integer(&[0x1f, 0x9a, 0x0a], 5), Ok((1337, 3)));
        assert_eq!(
            integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x01], 5),
            Err(Stop::Malformed)
        );
        assert_eq!(integer(&[0x1f, 0xff], 5), Err(Stop::Truncated));
    }

    /// Random header blocks using every representation: our decoder, exact, agrees with
    /// loona-hpack's on every field and on what is an error.
    #[test]
    fn hpack_matches_reference_decoder() {
        let mut rng = XorShift(4242);
        let names: [&[u8]; 6] = [
            b":path",
            b"x-a",
            b"grpc-status",
            b"cookie",
            b"x-long",
            b"b3",
        ];
        let mut blocks = 0;
        for _ in 0..80 {
            let mut ours = Hpack::exact();
            let mut theirs = loona_hpack::Decoder::new();
            let mut inserted = 0usize;
            for _ in 0..20 {
                let mut b = Vec::new();
                if rng.below(8) == 0 {
                    // Size update at the block start (at most what we keep).
                    let size = [0, 64, 200, 4096, 65536][rng.below(5) as usize];
                    b.push(0x3f);
                    if size < 31 {
                        b[0] = 0x20 | size as u8;
                    } else {
                        let mut v = size - 31;
                        while v >= 128 {
                            b.push(v as u8 | 0x80);
                            v >>= 7;
                        }
                        b.push(v as u8);
                    }
                }
                for _ in 0..1 + rng.below(6) {
                    let kind = rng.below(5);
                    if kind == 0 {
                        // Indexed, sometimes out of range.
                        let idx = 1 + rng.below(61 + inserted as u64 + 3) as usize;
                        push_int(&mut b, 0x80, 7, idx);
                        continue;
                    }
                    let (flag, prefix) = match kind {
                        1 | 2 => (0x40, 6),
                        3 => (0x00, 4),
                        _ => (0x10, 4),
                    };
                    if flag == 0x40 {
                        inserted += 1;
                    }
                    if rng.below(2) == 0 {
                        let idx = 1 + rng.below(61 + inserted as u64) as usize;
                        push_int(&mut b, flag, prefix, idx);
                    } else {
                        b.push(flag);
                        push_str(&mut b, names[rng.below(6) as usize], rng.below(2) == 0);
                    }
                    let v: Vec<u8> = (0..rng.below(100)).map(|_| rng.next() as u8).collect();
                    push_str(&mut b, &v, rng.below(2) == 0);
                }
                let mut mine = Vec::new();
                let o = ours.decode(&b, false, &mut |n, v| mine.push((n.to_vec(), v.to_vec())));
                let mut refs = Vec::new();
                let r = theirs.decode_with_cb(&b, |n, v| refs.push((n.to_vec(), v.to_vec())));
                assert_eq!(o.error, r.is_err(), "{b:?}");
                assert_eq!(mine, refs);
                assert_eq!(o.unknown, 0);
                blocks += 1;
                if o.error {
                    break;
                }
            }
        }
        assert!(blocks > 400, "{blocks}");
    }

    fn push_int(b: &mut Vec<u8>, flag: u8, prefix: u8, v: usize) {
        let max = (1usize << prefix) - 1;
        if v < max {
            b.push(flag | v as u8);
            return;
        }
        b.push(flag | max as u8);
        let mut v = v - max;
        while v >= 128 {
            b.push(v as u8 | 0x80);
            v >>= 7;
        }
        b.push(v as u8);
    }

    fn push_str(b: &mut Vec<u8>, s: &[u8], huffman: bool) {
        if huffman {
            let h = huffman_encode(s);
            push_int(b, 0x80, 7, h.len());
            b.extend_from_slice(&h);
        } else {
            push_int(b, 0, 7, s.len());
            b.extend_from_slice(s);
        }
    }
}
