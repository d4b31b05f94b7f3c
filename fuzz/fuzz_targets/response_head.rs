//! The response-head parser on arbitrary bytes, as tidegate's upstream client reads them:
//! it never panics, every span lies within the head, a bodiless answer (HEAD, 1xx, 204, 304)
//! is never given a body, a connection whose body runs to the close is never kept, and the
//! head parses the same however much of what follows it has arrived.

#![no_main]

use libfuzzer_sys::fuzz_target;
#[path = "../../src/proxy/h1/mod.rs"]
#[allow(dead_code)]
mod h1;

use h1::{Framing, ResponseHead};

const MAX: usize = 4096;

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let method: &[u8] = if first & 1 == 1 { b"HEAD" } else { b"GET" };
    let mut head = ResponseHead::default();
    let Ok(true) = head.parse(data, MAX, method) else {
        return;
    };
    let len = head.len;
    assert!(len <= data.len() && len <= MAX);
    for span in std::iter::once(head.reason).chain(head.fields.iter().flat_map(|f| [f.name, f.value])) {
        assert!(span.start <= span.end && span.end as usize <= len);
    }
    let bodiless = method == b"HEAD"
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304;
    if bodiless {
        assert_eq!(head.framing(), Framing::Empty);
    }
    if head.framing() == Framing::UntilClose {
        assert!(!head.keep_alive, "a body read to the close ends the connection");
    }
    let has = |name: &str| head.fields.iter().any(|f| f.is(data, name));
    if head.framing() == Framing::Chunked {
        assert!(has("transfer-encoding"));
    }
    let mut again = ResponseHead::default();
    assert_eq!(again.parse(&data[..len], MAX, method), Ok(true));
    assert_eq!(
        (again.len, again.status, again.framing(), again.keep_alive),
        (len, head.status, head.framing(), head.keep_alive)
    );
    assert_ne!(again.parse(&data[..len - 1], MAX, method), Ok(true));
});
