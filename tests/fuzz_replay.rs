//! Replays the fuzz corpora and a curated set of hostile inputs through the
//! same entry points the fuzzers use, so every case found stays tested.

use std::path::Path;

use rtmp_guard::fuzz;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries.flatten() {
        if let Ok(data) = std::fs::read(entry.path()) {
            run(&data);
            n += 1;
        }
    }
    n
}

/// Inputs known to break naive RTMP readers (see ../shared/notes).
fn hostile_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        vec![],
        vec![0],
        vec![1, 0x43, 0, 0, 0],
        // Type-1 header, delta 0xFFFFFF with an extended timestamp.
        vec![
            7, 0x03, 0, 0, 0, 0, 0, 4, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0x43, 0xff, 0xff, 0xff, 0, 0, 4,
            20, 0xff, 0xff, 0xff, 0xff,
        ],
        // SetChunkSize 1 then interleaved csids.
        vec![
            255, 0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x03, 0, 0, 0, 0, 0, 3, 20, 0,
            0, 0, 0, 2, 0x04, 0, 0, 0, 0, 0, 3, 20, 0, 0, 0, 0, 5,
        ],
    ];
    // A short command, as ServerSession panics on.
    let mut short = vec![64, 0x03, 0, 0, 0, 0, 0, 10, 20, 0, 0, 0, 0];
    short.extend([2, 0, 7]);
    short.extend(b"connect");
    seeds.push(short);
    seeds.push(rtmp_guard::rtmp::amf0::nested_strict_arrays(12_000));
    seeds
}

#[test]
fn chunk_parser_corpus_and_seeds_never_panic() {
    for s in hostile_seeds() {
        fuzz::chunk_parser(&s);
    }
    eprintln!(
        "chunk_parser: replayed {} corpus files",
        replay("chunk_parser", fuzz::chunk_parser)
    );
}

#[test]
fn amf0_corpus_and_seeds_never_panic() {
    for s in hostile_seeds() {
        fuzz::amf0(&s);
    }
    eprintln!("amf0: replayed {} corpus files", replay("amf0", fuzz::amf0));
}

#[test]
fn handshake_corpus_and_seeds_never_panic() {
    for s in hostile_seeds() {
        fuzz::handshake(&s);
    }
    eprintln!(
        "handshake: replayed {} corpus files",
        replay("handshake", fuzz::handshake)
    );
}

#[test]
fn proxy_protocol_corpus_and_seeds_never_panic() {
    for s in hostile_seeds() {
        fuzz::proxy_protocol(&s);
    }
    eprintln!(
        "proxy_protocol: replayed {} corpus files",
        replay("proxy_protocol", fuzz::proxy_protocol)
    );
}

#[test]
fn relay_corpus_and_seeds_never_panic_and_reframe_exactly() {
    for s in hostile_seeds() {
        fuzz::relay(&s);
    }
    eprintln!(
        "relay: replayed {} corpus files",
        replay("relay", fuzz::relay)
    );
}
