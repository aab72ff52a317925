//! Chunk parser throughput against memcpy on the same buffers.
//!
//! A 16 MiB stream of video messages (64 KiB each, like 1080p keyframes and
//! runs of P-frames) is chunked at 4 KiB and at 128 B. The parser must
//! follow every header; memcpy of the same bytes is the peer figure.
//!
//!     cargo bench --bench chunk_parser

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rtmp_guard::config::Limits;
use rtmp_guard::rtmp::chunk::writer::ChunkWriter;
use rtmp_guard::rtmp::chunk::{ChunkParser, MessageHeader};

const STREAM_BYTES: usize = 16 << 20;
const MESSAGE_BYTES: usize = 64 << 10;
/// The relay reads at most this much at a time.
const READ_SIZE: usize = 64 << 10;

fn stream(chunk_size: u32) -> Vec<u8> {
    let mut w = ChunkWriter::new();
    let mut out = Vec::with_capacity(STREAM_BYTES + STREAM_BYTES / 8);
    let set = MessageHeader {
        csid: 2,
        timestamp: 0,
        type_id: 1,
        stream_id: 0,
        length: 4,
    };
    w.write(&mut out, &set, &chunk_size.to_be_bytes());
    let payload = vec![0x17u8; MESSAGE_BYTES];
    let mut ts = 0u32;
    while out.len() < STREAM_BYTES {
        ts = ts.wrapping_add(40);
        let h = MessageHeader {
            csid: 6,
            timestamp: ts,
            type_id: 9,
            stream_id: 1,
            length: MESSAGE_BYTES as u32,
        };
        w.write(&mut out, &h, &payload);
    }
    out
}

fn parse(data: &[u8]) -> u64 {
    let mut parser = ChunkParser::new(Limits::default().chunk_limits());
    for read in data.chunks(READ_SIZE) {
        let mut pos = 0;
        while pos < read.len() {
            match parser.advance(&read[pos..]) {
                Ok(p) => pos += p.consumed,
                Err(_) => return 0,
            }
        }
    }
    parser.bytes()
}

fn copy(data: &[u8], dst: &mut [u8]) -> u64 {
    for (read, out) in data.chunks(READ_SIZE).zip(dst.chunks_mut(READ_SIZE)) {
        out[..read.len()].copy_from_slice(read);
    }
    dst.len() as u64
}

fn bench(c: &mut Criterion) {
    for chunk in [4096u32, 128] {
        let data = stream(chunk);
        assert_eq!(
            parse(&data),
            data.len() as u64,
            "parser must read the whole stream"
        );
        let mut group = c.benchmark_group(format!("chunks_{chunk}B"));
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.sample_size(30);
        group.bench_function("parse", |b| b.iter(|| parse(black_box(&data))));
        let mut dst = vec![0u8; data.len()];
        group.bench_function("memcpy", |b| {
            b.iter(|| copy(black_box(&data), black_box(&mut dst)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
