//! The chunked transfer coding (RFC 9112 7.1), decoded as bytes arrive in any pieces.
//! Strict where a lax reading would let two parsers disagree on where a message ends: hex
//! sizes without sign, space or overflow, CRLF (never a bare LF) after every size line and
//! every chunk, no control characters in extensions, trailers that are well-formed fields.
//! Extensions are dropped and trailers kept, so what is forwarded is framed afresh.

use std::ops::Range;

/// Why a chunked body was refused: the connection cannot be read further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    Size,
    #[error("invalid chunk extension")]
    Extension,
    #[error("missing CRLF in chunked body")]
    LineEnd,
    #[error("invalid trailer field")]
    Trailer,
    #[error("chunk line or trailers too long")]
    TooLong,
}

/// What one call of `decode` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes: this range of the input.
    Data(Range<usize>),
    /// The input is used up; the body goes on.
    NeedMore,
    /// The last chunk and the trailers were read; `trailers()` has the trailer fields.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` read so far).
    Size {
        digits: u8,
    },
    /// Spaces before `;` or the line end.
    SizeSpace,
    /// Inside extensions, up to the CR.
    Extension,
    /// After a size line's CR.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the CR of the final empty line.
    EndLf,
    Done,
}

/// A chunked decoder: feed it the bytes as they come, with `consumed` telling how much of
/// each input it used.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes left in the current chunk (while reading data), or its size so far.
    size: u64,
    /// Bytes of the current size line's extensions.
    line: usize,
    /// Trailer section as received, lines with their CRLF.
    trailers: Vec<u8>,
    max_line: usize,
    max_trailers: usize,
}

impl ChunkedDecoder {
    /// `max_line`: longest size line (extensions included); `max_trailers`: the trailer
    /// section's limit, as for a head.
    pub fn new(max_line: usize, max_trailers: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            trailers: Vec::new(),
            max_line,
            max_trailers,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The trailer fields, each `name: value\r\n`, once `End` was returned.
    pub fn trailers(&self) -> &[u8] {
        &self.trailers
    }

    /// Reads from `input` until it has body bytes to give, the body ended, or the input is
    /// used up. Returns how many bytes of `input` it consumed (data included) and what it
    /// found; call again with the rest.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Decoded), ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Data => {
                    let n = (self.size as usize).min(input.len() - i);
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok((i + n, Decoded::Data(i..i + n)));
                }
                State::Size { digits } => match hex(b) {
                    Some(d) => {
                        if digits >= 16 {
                            return Err(ChunkError::Size);
                        }
                        self.size = self.size << 4 | u64::from(d);
                        self.state = State::Size { digits: digits + 1 };
                    }
                    None if digits == 0 => return Err(ChunkError::Size),
                    None => {
                        self.line = 0;
                        self.state = match b {
                            b' ' | b'\t' => State::SizeSpace,
                            b';' => State::Extension,
                            b'\r' => State::SizeLf,
                            _ => return Err(ChunkError::Size),
                        };
                    }
                },
                State::SizeSpace => {
                    self.state = match b {
                        b' ' | b'\t' => State::SizeSpace,
                        b';' => State::Extension,
                        b'\r' => State::SizeLf,
                        _ => return Err(ChunkError::Size),
                    };
                    self.count_line()?;
                }
                State::Extension => {
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\t' => {}
                        0..=0x1f | 0x7f => return Err(ChunkError::Extension),
                        _ => {}
                    }
                    self.count_line()?;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.size = 0;
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart | State::Trailer => match b {
                    b'\r' if self.state == State::TrailerStart => self.state = State::EndLf,
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => return Err(ChunkError::LineEnd),
                    _ => {
                        self.push_trailer(b)?;
                        self.state = State::Trailer;
                    }
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.push_trailer(b'\r')?;
                    self.push_trailer(b'\n')?;
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.check_trailers()?;
                    self.state = State::Done;
                    return Ok((i + 1, Decoded::End));
                }
                State::Done => return Ok((i, Decoded::End)),
            }
            i += 1;
        }
        Ok((
            i,
            if self.is_done() {
                Decoded::End
            } else {
                Decoded::NeedMore
            },
        ))
    }

    fn count_line(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > self.max_line {
            return Err(ChunkError::TooLong);
        }
        Ok(())
    }

    fn push_trailer(&mut self, b: u8) -> Result<(), ChunkError> {
        if self.trailers.len() >= self.max_trailers {
            return Err(ChunkError::TooLong);
        }
        self.trailers.push(b);
        Ok(())
    }

    /// Every trailer line must be a field as in a head (no obs-fold, no space before the
    /// colon): checked by the same parser, over the whole section.
    fn check_trailers(&self) -> Result<(), ChunkError> {
        if self.trailers.is_empty() {
            return Ok(());
        }
        let mut section = self.trailers.clone();
        section.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; super::head::MAX_FIELDS];
        match httparse::parse_headers(&section, &mut fields) {
            Ok(httparse::Status::Complete((n, _))) if n == section.len() => Ok(()),
            _ => Err(ChunkError::Trailer),
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Writes the size line of a chunk of `len` bytes (`len` > 0; the last chunk is `0\r\n`
/// followed by the trailers and an empty line).
pub fn write_chunk_header(len: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}
