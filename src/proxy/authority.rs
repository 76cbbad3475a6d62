//! Makes a header block's `:authority` acceptable to the h2 crate.
//!
//! grpc C-core (Python `grpcio`, Ruby, PHP, C++) sends the percent-encoded
//! socket path as `:authority` on a Unix socket (`run%2Fx.sock`), and
//! grpc-java the raw path. The `http` crate refuses both as authorities, and
//! h2 resets every such stream with PROTOCOL_ERROR, while containerd (a
//! grpc-go server) serves them. On a Unix socket the authority carries no
//! information, so each byte that is not allowed there is replaced with `-`.
//!
//! HPACK is stateful: a literal "with incremental indexing" enters both
//! peers' dynamic tables, and later blocks refer to it by index. The
//! replacement keeps the value's length and the field's representation, so
//! the entry has the same size in h2's table as in the client's, evictions
//! happen alike, and every other field passes as the very bytes it came in.

use httlib_hpack::{Decoder, DecoderError, Encoder};

const AUTHORITY: &[u8] = b":authority";
/// `:authority`'s index in HPACK's static table.
const AUTHORITY_INDEX: u32 = 1;
/// The first representation bit of an indexed field; everything else is a
/// literal or a table size update.
const INDEXED: u8 = 0x80;
/// How many bytes of a block are offered to the decoder at first for one
/// field; a field longer than that is offered again with twice as many.
const FIRST_WINDOW: usize = 4096;

/// Whether h2 accepts `value` as an authority; it runs this same parser.
pub fn is_valid(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// `value` with every byte that may not appear in a host name replaced,
/// keeping its length. `None` for what cannot be made valid that way (an
/// empty value), which is then left for h2 to refuse as before.
pub fn sanitize(value: &[u8]) -> Option<Vec<u8>> {
    let fixed: Vec<u8> = value
        .iter()
        .map(|&b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => b,
            _ => b'-',
        })
        .collect();
    is_valid(&fixed).then_some(fixed)
}

/// One connection's view of its client's header compression.
#[derive(Default)]
pub struct AuthorityRewriter {
    /// Mirrors the client's encoder; it must see every block of the
    /// connection, in order.
    decoder: Decoder<'static>,
    /// Only encodes single fields by static index; its own table is unused.
    encoder: Encoder<'static>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// The block is fine as it is.
    Unchanged,
    /// The block with its `:authority` made acceptable.
    Changed(Vec<u8>),
}

impl AuthorityRewriter {
    /// Decodes the complete header block `block` (all its fragments, without
    /// padding or priority) and returns it with any unacceptable
    /// `:authority` literal replaced. After an error the decoder no longer
    /// mirrors the client's, so the caller must stop using it.
    pub fn rewrite(&mut self, block: &[u8]) -> Result<Rewrite, DecoderError> {
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        while pos < block.len() {
            let (consumed, field) = self.decode_one(&block[pos..])?;
            let raw = &block[pos..pos + consumed];
            let replacement = match field {
                Some((name, value, flags)) if raw[0] & INDEXED == 0 && name == AUTHORITY && !is_valid(&value) => {
                    sanitize(&value).map(|fixed| (fixed, flags))
                }
                _ => None,
            };
            match replacement {
                Some((fixed, flags)) => {
                    let out = out.get_or_insert_with(|| block[..pos].to_vec());
                    // Plain (not Huffman) strings: the table entry's size
                    // depends on the decoded length only, which is kept.
                    self.encoder
                        .encode_indexed_name(AUTHORITY_INDEX, fixed, flags & !0x3, out)
                        .map_err(|_| DecoderError::InvalidInput)?;
                }
                None => {
                    if let Some(out) = out.as_mut() {
                        out.extend_from_slice(raw);
                    }
                }
            }
            pos += consumed;
        }
        Ok(match out {
            Some(block) => Rewrite::Changed(block),
            None => Rewrite::Unchanged,
        })
    }

    /// Decodes the one representation at the start of `rest`: how many
    /// bytes it took, and the field (none for a table size update). The
    /// decoder drains what it is given, so it gets a window that grows only
    /// for a long field, not the whole remaining block each time.
    #[allow(clippy::type_complexity)]
    fn decode_one(&mut self, rest: &[u8]) -> Result<(usize, Option<(Vec<u8>, Vec<u8>, u8)>), DecoderError> {
        let mut window = FIRST_WINDOW.min(rest.len());
        loop {
            let mut buf = rest[..window].to_vec();
            let mut fields = Vec::with_capacity(1);
            match self.decoder.decode_exact(&mut buf, &mut fields) {
                Ok(_) => return Ok((window - buf.len(), fields.pop())),
                // Cut off by the window, not by the block: look further.
                Err(DecoderError::IntegerUnderflow) if window < rest.len() => {
                    window = (window * 2).min(rest.len());
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRPCIO_AUTHORITY: &[u8] = b"tmp%2F.tmpAbC%2Fpodckpt.sock";

    /// A request block as a client with a dynamic table encodes it: fields
    /// seen before become references to its table (flag 0x10).
    fn request(encoder: &mut Encoder<'static>, authority: &[u8], index_authority: bool, huffman: bool) -> Vec<u8> {
        let mut block = Vec::new();
        encoder
            .encode((b":method".to_vec(), b"POST".to_vec(), 0x14), &mut block)
            .unwrap();
        encoder
            .encode((b":scheme".to_vec(), b"http".to_vec(), 0x14), &mut block)
            .unwrap();
        encoder
            .encode(
                (
                    b":path".to_vec(),
                    b"/runtime.v1.RuntimeService/Version".to_vec(),
                    0x14 | if huffman { 0x2 } else { 0 },
                ),
                &mut block,
            )
            .unwrap();
        let flags = 0x10 | (if index_authority { 0x4 } else { 0 }) | if huffman { 0x2 } else { 0 };
        encoder
            .encode((AUTHORITY.to_vec(), authority.to_vec(), flags), &mut block)
            .unwrap();
        encoder
            .encode((b"user-agent".to_vec(), b"grpc-python/1.76".to_vec(), 0x14), &mut block)
            .unwrap();
        block
    }

    /// What h2's decoder would see, as (name, value) pairs.
    fn decode_all(decoder: &mut Decoder<'static>, block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut buf = block.to_vec();
        let mut fields = Vec::new();
        decoder.decode(&mut buf, &mut fields).unwrap();
        fields.into_iter().map(|(n, v, _)| (n, v)).collect()
    }

    fn authority_of(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        fields.iter().find(|(n, _)| n == AUTHORITY).unwrap().1.clone()
    }

    #[test]
    fn sanitizing_keeps_length_and_is_accepted() {
        for bad in [&b"run%2Fx.sock"[..], b"/run/podckpt/podckpt.sock", b"a b:c@d[e]", b"%"] {
            assert!(!is_valid(bad), "{bad:?} must be invalid for the test to mean anything");
            let fixed = sanitize(bad).unwrap();
            assert_eq!(fixed.len(), bad.len());
            assert!(is_valid(&fixed), "{fixed:?}");
        }
        assert_eq!(sanitize(b"run%2Fx.sock").unwrap(), b"run-2Fx.sock");
        assert_eq!(sanitize(b""), None);
    }

    #[test]
    fn valid_blocks_pass_unchanged() {
        let mut client = Encoder::default();
        let mut rewriter = AuthorityRewriter::default();
        for _ in 0..3 {
            let block = request(&mut client, b"localhost", true, true);
            assert_eq!(rewriter.rewrite(&block).unwrap(), Rewrite::Unchanged);
        }
    }

    /// Through many calls on one connection, indexed and not, Huffman and
    /// not, h2's table stays in step with the client's: every later block
    /// decodes to what the client meant, with the authority sanitized.
    #[test]
    fn tables_stay_in_step_across_blocks() {
        for (index_authority, huffman) in [(true, true), (true, false), (false, true), (false, false)] {
            let mut client = Encoder::default();
            let mut reference = Decoder::default();
            let mut rewriter = AuthorityRewriter::default();
            let mut server = Decoder::default();
            for call in 0..50 {
                let block = request(&mut client, GRPCIO_AUTHORITY, index_authority, huffman);
                let meant = decode_all(&mut reference, &block);
                let forwarded = match rewriter.rewrite(&block).unwrap() {
                    Rewrite::Changed(block) => block,
                    Rewrite::Unchanged => block,
                };
                let seen = decode_all(&mut server, &forwarded);
                assert_eq!(seen.len(), meant.len(), "call {call}");
                for ((sn, sv), (mn, mv)) in seen.iter().zip(&meant) {
                    assert_eq!(sn, mn);
                    if sn != AUTHORITY {
                        assert_eq!(sv, mv, "call {call}: {}", String::from_utf8_lossy(sn));
                    }
                }
                assert_eq!(authority_of(&seen), sanitize(GRPCIO_AUTHORITY).unwrap());
                assert!(is_valid(&authority_of(&seen)));
            }
        }
    }

    #[test]
    fn a_sensitive_authority_stays_never_indexed() {
        let mut client = Encoder::default();
        let mut block = Vec::new();
        client
            .encode((AUTHORITY.to_vec(), GRPCIO_AUTHORITY.to_vec(), 0x8), &mut block)
            .unwrap();
        let Rewrite::Changed(out) = AuthorityRewriter::default().rewrite(&block).unwrap() else {
            panic!("must be rewritten");
        };
        let mut buf = out.clone();
        let mut fields = Vec::new();
        Decoder::default().decode(&mut buf, &mut fields).unwrap();
        assert_eq!(fields[0].2, 0x8, "never-indexed kept");
    }

    #[test]
    fn long_fields_are_decoded_past_the_first_window() {
        let mut client = Encoder::default();
        let mut block = request(&mut client, GRPCIO_AUTHORITY, true, false);
        client
            .encode((b"x-big".to_vec(), vec![b'v'; 3 * FIRST_WINDOW], 0x4), &mut block)
            .unwrap();
        assert!(matches!(
            AuthorityRewriter::default().rewrite(&block).unwrap(),
            Rewrite::Changed(_)
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        // An index far beyond both tables.
        assert!(AuthorityRewriter::default().rewrite(&[0xff, 0xff, 0x7f]).is_err());
    }
}
