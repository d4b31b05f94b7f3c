//! The chunked decoder on arbitrary bytes fed in arbitrary pieces: it never panics, the
//! pieces do not change what it reads, and what it reads, framed again, reads the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
#[path = "../../src/proxy/h1/mod.rs"]
#[allow(dead_code)]
mod h1;

use h1::{ChunkError, ChunkedDecoder, Decoded, write_chunk_header};

/// Body, trailers and bytes used, or the error; fed `step` bytes at a time.
fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>, usize), ChunkError> {
    let mut d = ChunkedDecoder::new(256, 1024);
    let (mut body, mut at, mut fed) = (Vec::new(), 0, 0);
    while !d.is_done() {
        if at == fed {
            if fed == input.len() {
                break;
            }
            fed = (fed + step).min(input.len());
        }
        let (n, found) = d.decode(&input[at..fed])?;
        assert!(n <= fed - at);
        if let Decoded::Data(r) = found {
            assert!(r.end <= n);
            body.extend_from_slice(&input[at..fed][r]);
        }
        at += n;
    }
    Ok((body, d.trailers().to_vec(), if d.is_done() { at } else { usize::MAX }))
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = decode(input, input.len().max(1));
    let pieces = decode(input, usize::from(step).max(1));
    assert_eq!(whole, pieces);
    let Ok((body, trailers, used)) = whole else {
        return;
    };
    if used == usize::MAX {
        return;
    }
    let mut framed = Vec::new();
    for chunk in body.chunks(usize::from(step).max(1)) {
        write_chunk_header(chunk.len(), &mut framed);
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n");
    framed.extend_from_slice(&trailers);
    framed.extend_from_slice(b"\r\n");
    assert_eq!(decode(&framed, 3), Ok((body, trailers, framed.len())));
});
