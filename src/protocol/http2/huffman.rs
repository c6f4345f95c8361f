//! The HPACK Huffman code (RFC 7541 Appendix B): canonical decoding tables built at compile
//! time from the code lengths, and the decoder. Pure.

/// Bit length of the HPACK Huffman code of each symbol: bytes 0..=255, then EOS (RFC 7541
/// Appendix B). The code is canonical (the codes of one length are consecutive, in symbol
/// order), so these lengths define it.
#[rustfmt::skip]
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
];

const EOS: u16 = 256;
const MAX_CODE_LEN: usize = 30;

/// Canonical decoding tables: for each code length, its first code, how many codes have it,
/// and where its symbols start in `symbols` (which lists symbols by length, then value).
struct HuffmanTable {
    first: [u32; MAX_CODE_LEN + 1],
    count: [u32; MAX_CODE_LEN + 1],
    start: [u16; MAX_CODE_LEN + 1],
    symbols: [u16; 257],
}

const HUFFMAN: HuffmanTable = huffman_table();

const fn huffman_table() -> HuffmanTable {
    let mut t = HuffmanTable {
        first: [0; MAX_CODE_LEN + 1],
        count: [0; MAX_CODE_LEN + 1],
        start: [0; MAX_CODE_LEN + 1],
        symbols: [0; 257],
    };
    let mut s = 0;
    while s < 257 {
        t.count[HUFFMAN_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let (mut code, mut at, mut len) = (0u32, 0u16, 1);
    while len <= MAX_CODE_LEN {
        code = (code + t.count[len - 1]) << 1;
        t.first[len] = code;
        t.start[len] = at;
        let mut s = 0;
        while s < 257 {
            if HUFFMAN_LENGTHS[s] as usize == len {
                t.symbols[at as usize] = s as u16;
                at += 1;
            }
            s += 1;
        }
        len += 1;
    }
    t
}

/// Decode a Huffman-coded string; None if it holds EOS or its padding is not 1 bits (< 8).
pub(super) fn huffman_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let t = &HUFFMAN;
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in raw {
        for shift in (0..8).rev() {
            code = code << 1 | u32::from(byte >> shift & 1);
            len += 1;
            let offset = code.wrapping_sub(t.first[len]);
            if offset < t.count[len] {
                let sym = t.symbols[usize::from(t.start[len]) + offset as usize];
                if sym == EOS {
                    return None;
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            } else if len == MAX_CODE_LEN {
                return None;
            }
        }
    }
    // Padding: the most significant bits of EOS, that is up to 7 one bits.
    (len < 8 && code == (1 << len) - 1).then_some(out)
}

/// Huffman-code `s` with our table (tests only).
#[cfg(test)]
pub(super) fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let t = &HUFFMAN;
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u64, 0u32);
    for &c in s {
        let len = usize::from(HUFFMAN_LENGTHS[usize::from(c)]);
        let at = (usize::from(t.start[len])..257)
            .find(|&k| t.symbols[k] == u16::from(c))
            .unwrap();
        let code = t.first[len] + (at - usize::from(t.start[len])) as u32;
        acc = acc << len | u64::from(code);
        bits += len as u32;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push((acc << (8 - bits)) as u8 | (0xff >> bits));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http2::test_util::XorShift;

    #[test]
    fn huffman_matches_reference_decoder() {
        // RFC 7541 C.4.1.
        let www = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(huffman_decode(&www).unwrap(), b"www.example.com");
        assert_eq!(huffman_encode(b"www.example.com"), www);
        assert_eq!(huffman_decode(&[]).unwrap(), b"");
        let mut reference = loona_hpack::huffman::HuffmanDecoder::new();
        let mut rng = XorShift(99);
        for round in 0..3000 {
            let n = rng.below(40) as usize;
            let s: Vec<u8> = if round < 256 {
                vec![round as u8; 3]
            } else {
                (0..n).map(|_| rng.next() as u8).collect()
            };
            let enc = huffman_encode(&s);
            assert_eq!(reference.decode(&enc).unwrap(), s, "{s:?}");
            assert_eq!(huffman_decode(&enc).unwrap(), s);
            // Random bytes: both decoders agree on what is valid.
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            assert_eq!(
                huffman_decode(&junk),
                reference.decode(&junk).ok(),
                "{junk:?}"
            );
        }
        // EOS in the string, padding of 8 bits, padding with a 0 bit.
        assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xfc]), None);
        assert_eq!(huffman_decode(&[0x07, 0xff]), None);
        assert_eq!(huffman_decode(&[0x06]), None);
    }
}
