//! HTTP/1.1 on the wire (RFC 9112): request and response heads parsed by httparse into
//! offsets over the connection's own buffer, the framing of their bodies, and the chunked
//! coding. What a message may not say (smuggling's raw material) is refused here, before
//! any byte of it is forwarded.

mod chunked;
mod fields;
mod head;

pub use chunked::{ChunkError, ChunkedDecoder, Decoded, write_chunk_header};
pub use fields::{Field, KnownField, Span, write_field, write_lines};
pub use head::{Framing, HeadError, MAX_FIELDS, RequestHead, ResponseHead};

#[cfg(test)]
mod tests;
