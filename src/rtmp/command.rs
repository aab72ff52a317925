//! RTMP commands (`connect`, `publish`, `play`, ...) read from a message.
//!
//! A command is an AMF0 sequence: name, transaction id, command object, then
//! arguments. Type 17 (AMF3 command) carries the same AMF0 values after a
//! leading format byte of 0.

use std::fmt;

use super::amf0::{self, Amf0Error, Amf0Value};
use super::chunk::types;

/// A decoded command message.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub transaction_id: f64,
    pub object: Amf0Value,
    pub arguments: Vec<Amf0Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandError {
    Amf0(Amf0Error),
    /// The values are well-formed but not a command's shape.
    Malformed(&'static str),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Amf0(e) => e.fmt(f),
            CommandError::Malformed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for CommandError {}

impl From<Amf0Error> for CommandError {
    fn from(e: Amf0Error) -> Self {
        CommandError::Amf0(e)
    }
}

/// The AMF0 bytes of a command or data message, without the AMF3 format
/// byte that types 15 and 17 carry.
pub fn amf0_body(type_id: u8, payload: &[u8]) -> Result<&[u8], CommandError> {
    match type_id {
        types::COMMAND_AMF3 | types::DATA_AMF3 => match payload.split_first() {
            Some((0, rest)) => Ok(rest),
            None => Ok(payload),
            Some(_) => Err(CommandError::Malformed(
                "AMF3 message without AMF0 format byte",
            )),
        },
        _ => Ok(payload),
    }
}

/// Decodes a command message (type 17 or 20).
pub fn decode(type_id: u8, payload: &[u8], max_depth: usize) -> Result<Command, CommandError> {
    let mut values = amf0::read_all(amf0_body(type_id, payload)?, max_depth)?.into_iter();
    let name = match values.next() {
        Some(Amf0Value::String(name)) => name,
        _ => return Err(CommandError::Malformed("command without a name")),
    };
    let transaction_id = match values.next() {
        Some(Amf0Value::Number(id)) => id,
        _ => return Err(CommandError::Malformed("command without a transaction id")),
    };
    let object = values.next().unwrap_or(Amf0Value::Null);
    Ok(Command {
        name,
        transaction_id,
        object,
        arguments: values.collect(),
    })
}

/// Checks that a data message (type 15 or 18) is well-formed AMF0.
pub fn check_data(type_id: u8, payload: &[u8], max_depth: usize) -> Result<(), CommandError> {
    amf0::read_all(amf0_body(type_id, payload)?, max_depth)?;
    Ok(())
}

/// What the guard needs from a client's `connect`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRequest {
    pub transaction_id: f64,
    /// `app` exactly as sent.
    pub app_raw: String,
    /// `app` as origins route it: query string and a trailing '/' removed.
    pub app: String,
    pub tc_url: Option<String>,
    pub page_url: Option<String>,
    pub swf_url: Option<String>,
    pub flash_ver: Option<String>,
}

impl ConnectRequest {
    /// Reads a `connect` command; `None` if the command is another one.
    pub fn from_command(cmd: &Command) -> Option<Result<ConnectRequest, CommandError>> {
        if cmd.name != "connect" {
            return None;
        }
        let field = |k: &str| {
            cmd.object
                .get(k)
                .and_then(Amf0Value::as_str)
                .map(str::to_string)
        };
        if cmd.object.properties().is_none() {
            return Some(Err(CommandError::Malformed(
                "connect without a command object",
            )));
        }
        let Some(app_raw) = field("app") else {
            return Some(Err(CommandError::Malformed("connect without an app")));
        };
        Some(Ok(ConnectRequest {
            transaction_id: cmd.transaction_id,
            app: route_name(&app_raw).to_string(),
            app_raw,
            tc_url: field("tcUrl"),
            page_url: field("pageUrl"),
            swf_url: field("swfUrl"),
            flash_ver: field("flashVer"),
        }))
    }
}

/// The app name used for routing, as nginx-rtmp reads it: everything before
/// the first '?', without one trailing '/'.
pub fn route_name(app: &str) -> &str {
    let base = app.split('?').next().unwrap_or(app);
    base.strip_suffix('/').unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::amf0::encode;

    fn connect(obj: Amf0Value) -> Vec<u8> {
        encode(&[
            Amf0Value::String("connect".into()),
            Amf0Value::Number(1.0),
            obj,
        ])
        .unwrap()
    }

    #[test]
    fn connect_app_is_routed_without_query_or_slash() {
        let obj = Amf0Value::Object(vec![
            ("app".into(), Amf0Value::String("live/?token=abc".into())),
            ("tcUrl".into(), Amf0Value::String("rtmp://h/live".into())),
        ]);
        let cmd = decode(20, &connect(obj), 32).unwrap();
        let req = ConnectRequest::from_command(&cmd).unwrap().unwrap();
        assert_eq!(req.app, "live");
        assert_eq!(req.app_raw, "live/?token=abc");
        assert_eq!(req.tc_url.as_deref(), Some("rtmp://h/live"));
    }

    #[test]
    fn amf3_command_has_a_format_byte() {
        let mut bytes = vec![0];
        bytes.extend(connect(Amf0Value::Object(vec![(
            "app".into(),
            Amf0Value::String("live".into()),
        )])));
        assert_eq!(decode(17, &bytes, 32).unwrap().name, "connect");
        bytes[0] = 0x11;
        assert!(decode(17, &bytes, 32).is_err());
    }

    #[test]
    fn short_commands_are_errors_not_panics() {
        assert!(decode(20, &[], 32).is_err());
        assert!(decode(
            20,
            &encode(&[Amf0Value::String("connect".into())]).unwrap(),
            32
        )
        .is_err());
        let cmd = decode(
            20,
            &encode(&[Amf0Value::String("connect".into()), Amf0Value::Number(1.0)]).unwrap(),
            32,
        )
        .unwrap();
        assert!(ConnectRequest::from_command(&cmd).unwrap().is_err());
    }

    #[test]
    fn connect_without_app_is_refused() {
        let cmd = decode(20, &connect(Amf0Value::Object(vec![])), 32).unwrap();
        assert!(ConnectRequest::from_command(&cmd).unwrap().is_err());
    }

    #[test]
    fn other_commands_are_not_connects() {
        let bytes = encode(&[
            Amf0Value::String("publish".into()),
            Amf0Value::Number(5.0),
            Amf0Value::Null,
            Amf0Value::String("cam1".into()),
        ])
        .unwrap();
        let cmd = decode(20, &bytes, 32).unwrap();
        assert!(ConnectRequest::from_command(&cmd).is_none());
        assert_eq!(cmd.arguments, vec![Amf0Value::String("cam1".into())]);
    }
}
