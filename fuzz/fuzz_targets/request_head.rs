//! The request-head parser on arbitrary bytes: it never panics, every span it returns lies
//! within the head, the framing it decides is backed by a field, and it finds the same head
//! however much of what follows it has arrived.

#![no_main]

use libfuzzer_sys::fuzz_target;
#[path = "../../src/proxy/h1/mod.rs"]
#[allow(dead_code)]
mod h1;

use h1::{Framing, RequestHead};

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut head = RequestHead::default();
    let Ok(true) = head.parse(data, MAX) else {
        return;
    };
    let len = head.len;
    assert!(len <= data.len() && len <= MAX);
    for span in [head.method, head.target]
        .into_iter()
        .chain(head.host)
        .chain(head.fields.iter().flat_map(|f| [f.name, f.value]))
    {
        assert!(span.start <= span.end && span.end as usize <= len);
    }
    let has = |name: &str| head.fields.iter().any(|f| f.is(data, name));
    match head.framing() {
        Framing::Chunked => assert!(has("transfer-encoding") && !has("content-length")),
        Framing::Length(_) => assert!(has("content-length") && !has("transfer-encoding")),
        Framing::Empty => assert!(!has("transfer-encoding")),
        Framing::UntilClose => panic!("a request never runs until the close"),
    }
    // The head alone parses to the same head; any shorter prefix is not a complete one.
    let mut again = RequestHead::default();
    assert_eq!(again.parse(&data[..len], MAX), Ok(true));
    assert_eq!((again.len, again.framing()), (len, head.framing()));
    assert_ne!(again.parse(&data[..len - 1], MAX), Ok(true));
});
