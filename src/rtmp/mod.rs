//! The RTMP protocol, with no I/O: the handshake wrapper, the chunk parser,
//! the AMF0 reader, commands, and the replies the guard sends. Nothing here
//! knows about sockets or clocks, so all of it is unit-, property- and
//! fuzz-tested directly.

pub mod aggregate;
pub mod amf0;
pub mod cache;
pub mod chunk;
pub mod command;
pub mod control;
pub mod emit;
pub mod handshake;
pub mod proxy_protocol;
pub mod reply;
