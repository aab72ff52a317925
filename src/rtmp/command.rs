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

/// The type and payload a client's command or data message travels on:
/// type 17 and 15 must start with the AMF0 format byte 0 (an origin skips
/// that byte whatever it is) and go on as 20 and 18 without it.
pub fn canonical(type_id: u8, payload: &[u8]) -> Result<(u8, &[u8]), CommandError> {
    let strip = |to: u8| match payload.split_first() {
        Some((0, rest)) => Ok((to, rest)),
        _ => Err(CommandError::Malformed(
            "AMF3 message without AMF0 format byte",
        )),
    };
    match type_id {
        types::COMMAND_AMF3 => strip(types::COMMAND_AMF0),
        types::DATA_AMF3 => strip(types::DATA_AMF0),
        other => Ok((other, payload)),
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

/// Every command an origin in front of which the guard runs may act on
/// (nginx-rtmp's command map, node-media-server's handlers), spelled as
/// clients send them.
pub const KNOWN_COMMANDS: [&str; 20] = [
    "connect",
    "close",
    "createStream",
    "deleteStream",
    "closeStream",
    "releaseStream",
    "FCPublish",
    "FCUnpublish",
    "FCSubscribe",
    "FCUnsubscribe",
    "publish",
    "play",
    "play2",
    "pause",
    "pauseraw",
    "seek",
    "receiveAudio",
    "receiveVideo",
    "getStreamLength",
    "setDataFrame",
];

/// The known command a name reads as to an origin that matches command
/// names without regard to case and stops at a NUL, as nginx-rtmp does.
pub fn reads_as_known(name: &str) -> Option<&'static str> {
    let cut = name.split('\0').next().unwrap_or(name);
    KNOWN_COMMANDS
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(cut))
}

/// A client command in one of the shapes the guard decides on. Names are
/// as sent, query included.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCommand<'c> {
    Connect,
    CreateStream,
    /// Closes the flow of the message stream it is sent on, and of the
    /// stream it names, if any (GStreamer names it).
    CloseStream {
        name: Option<&'c str>,
    },
    /// Closes stream `stream_id`; GStreamer sends the stream's name
    /// instead.
    DeleteStream {
        stream_id: Option<u32>,
        name: Option<&'c str>,
    },
    Publish {
        name: &'c str,
    },
    Play {
        name: &'c str,
    },
    /// Decided like `play`, on its `streamName`.
    Play2 {
        name: &'c str,
    },
    /// Preludes of a publish: decided like one, open no flow.
    FcPublish {
        name: &'c str,
    },
    ReleaseStream {
        name: &'c str,
    },
    FcUnpublish {
        name: &'c str,
    },
    /// Decided like a play, opens no flow.
    FcSubscribe {
        name: &'c str,
    },
    /// `FCUnsubscribe` and `getStreamLength`: they name a stream, and the
    /// guard decides nothing on them.
    NamesStream {
        name: &'c str,
    },
    /// A known command the guard does not decide on, in its shape, or an
    /// application's own call.
    Other,
}

/// Reads a client's command strictly: a known command must be spelled
/// exactly and carry each argument where the origin reads it, with the
/// type it reads; no object anywhere may repeat a key.
pub fn classify(cmd: &Command) -> Result<ClientCommand<'_>, CommandError> {
    let malformed = |why| Err(CommandError::Malformed(why));
    if std::iter::once(&cmd.object)
        .chain(&cmd.arguments)
        .any(has_duplicate_keys)
    {
        return malformed("an object repeats a key");
    }
    let known = reads_as_known(&cmd.name);
    if known.is_some_and(|k| k != cmd.name) {
        return malformed("a known command, spelled another way");
    }
    let null = matches!(cmd.object, Amf0Value::Null);
    let args = cmd.arguments.as_slice();
    let shape = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(CommandError::Malformed(
                "arguments not in the command's shape",
            ))
        }
    };
    use Amf0Value::{Boolean as B, EcmaArray, Number as N, Object, String as S};
    let named = match args {
        [S(name)] if null => Ok(name.as_str()),
        _ => Err(CommandError::Malformed(
            "arguments not in the command's shape",
        )),
    };
    Ok(match known {
        None => ClientCommand::Other,
        Some("connect") => ClientCommand::Connect,
        Some("createStream") => {
            shape(null && args.is_empty())?;
            ClientCommand::CreateStream
        }
        Some("closeStream") => match args {
            [] if null => ClientCommand::CloseStream { name: None },
            [S(name)] if null => ClientCommand::CloseStream { name: Some(name) },
            _ => return malformed("arguments not in the command's shape"),
        },
        Some("deleteStream") => match args {
            [N(id)] if null && id.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(id) => {
                ClientCommand::DeleteStream {
                    stream_id: Some(*id as u32),
                    name: None,
                }
            }
            [S(name)] if null => ClientCommand::DeleteStream {
                stream_id: None,
                name: Some(name),
            },
            _ => return malformed("arguments not in the command's shape"),
        },
        Some("publish") => match args {
            [S(name)] | [S(name), S(_)] if null => ClientCommand::Publish { name },
            _ => return malformed("arguments not in the command's shape"),
        },
        Some("play") => match args {
            [S(name)] | [S(name), N(_)] | [S(name), N(_), N(_)] | [S(name), N(_), N(_), B(_)]
                if null =>
            {
                ClientCommand::Play { name }
            }
            _ => return malformed("arguments not in the command's shape"),
        },
        Some("play2") => match args {
            [params @ (Object(_) | EcmaArray(_))] if null => match params.get("streamName") {
                Some(S(name)) => ClientCommand::Play2 { name },
                _ => return malformed("play2 without a streamName"),
            },
            _ => return malformed("arguments not in the command's shape"),
        },
        Some("FCPublish") => ClientCommand::FcPublish {
            name: named.clone()?,
        },
        Some("releaseStream") => ClientCommand::ReleaseStream {
            name: named.clone()?,
        },
        Some("FCUnpublish") => ClientCommand::FcUnpublish {
            name: named.clone()?,
        },
        Some("FCSubscribe") => ClientCommand::FcSubscribe {
            name: named.clone()?,
        },
        Some("FCUnsubscribe") | Some("getStreamLength") => ClientCommand::NamesStream {
            name: named.clone()?,
        },
        Some("pause") | Some("pauseraw") => {
            shape(null && matches!(args, [B(_), N(_)]))?;
            ClientCommand::Other
        }
        Some("seek") => {
            shape(null && matches!(args, [N(_)]))?;
            ClientCommand::Other
        }
        Some("receiveAudio") | Some("receiveVideo") => {
            shape(null && matches!(args, [B(_)]))?;
            ClientCommand::Other
        }
        // A data message's name ("setDataFrame", "close"): not a command a
        // client sends.
        Some(_) => return malformed("not a client command"),
    })
}

impl ClientCommand<'_> {
    /// The stream name the command carries (query included), if any: the
    /// argument an origin reads as the stream.
    pub fn stream_name(&self) -> Option<&str> {
        match *self {
            ClientCommand::Publish { name }
            | ClientCommand::Play { name }
            | ClientCommand::Play2 { name }
            | ClientCommand::FcPublish { name }
            | ClientCommand::ReleaseStream { name }
            | ClientCommand::FcUnpublish { name }
            | ClientCommand::FcSubscribe { name }
            | ClientCommand::NamesStream { name } => Some(name),
            ClientCommand::CloseStream { name } | ClientCommand::DeleteStream { name, .. } => name,
            ClientCommand::Connect | ClientCommand::CreateStream | ClientCommand::Other => None,
        }
    }
}

/// `cmd`, a command [`classify`] read a stream name in, with `name` in
/// that name's place: `play2`'s `streamName`, else the first argument.
/// Everything else stays as it was, in its order and AMF types.
pub fn with_stream_name(cmd: &Command, name: &str) -> Command {
    let mut out = cmd.clone();
    let renamed = Amf0Value::String(name.to_string());
    if cmd.name == "play2" {
        if let Some(Amf0Value::Object(props) | Amf0Value::EcmaArray(props)) =
            out.arguments.first_mut()
        {
            for (key, value) in props.iter_mut() {
                if key == "streamName" {
                    *value = renamed.clone();
                }
            }
        }
    } else if let Some(first @ Amf0Value::String(_)) = out.arguments.first_mut() {
        *first = renamed;
    }
    out
}

/// A `play2`'s `oldStreamName`, if it carries one as a string: the
/// stream a transition switches from, which names a stream too.
pub fn play2_old_name(cmd: &Command) -> Option<&str> {
    if cmd.name != "play2" {
        return None;
    }
    cmd.arguments.first()?.get("oldStreamName")?.as_str()
}

/// Sets every `oldStreamName` of a `play2` to `name`.
pub fn set_play2_old_name(cmd: &mut Command, name: &str) {
    if cmd.name != "play2" {
        return;
    }
    if let Some(Amf0Value::Object(props) | Amf0Value::EcmaArray(props)) = cmd.arguments.first_mut()
    {
        for (key, value) in props.iter_mut() {
            if key == "oldStreamName" {
                *value = Amf0Value::String(name.to_string());
            }
        }
    }
}

/// A command's AMF0 bytes: name, transaction id, object, arguments.
pub fn encode(cmd: &Command) -> Result<Vec<u8>, amf0::Amf0EncodeError> {
    let mut values = vec![
        Amf0Value::String(cmd.name.clone()),
        Amf0Value::Number(cmd.transaction_id),
        cmd.object.clone(),
    ];
    values.extend(cmd.arguments.iter().cloned());
    amf0::encode(&values)
}

/// The AMF0 types of a command's object and arguments, for logs:
/// `null; string, number`.
pub fn shape_of(cmd: &Command) -> String {
    let args: Vec<&str> = cmd.arguments.iter().map(Amf0Value::type_name).collect();
    format!("{}; {}", cmd.object.type_name(), args.join(", "))
}

/// Whether an object or ECMA array anywhere in `value` repeats a key.
pub fn has_duplicate_keys(value: &Amf0Value) -> bool {
    match value {
        Amf0Value::Object(props) | Amf0Value::EcmaArray(props) => {
            props
                .iter()
                .enumerate()
                .any(|(i, (k, _))| props[..i].iter().any(|(other, _)| other == k))
                || props.iter().any(|(_, v)| has_duplicate_keys(v))
        }
        Amf0Value::StrictArray(items) => items.iter().any(has_duplicate_keys),
        _ => false,
    }
}

/// What the guard needs from a client's `connect`, and the command itself,
/// which the guard re-encodes for the origin.
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
    command: Command,
}

impl ConnectRequest {
    /// Reads a `connect` command; `None` if the command is another one.
    /// An object that repeats a key, or whose `app` or `tcUrl` is not a
    /// string, is refused: an origin could read another value than the
    /// guard did.
    pub fn from_command(cmd: &Command) -> Option<Result<ConnectRequest, CommandError>> {
        if cmd.name != "connect" {
            return None;
        }
        Some(ConnectRequest::read(cmd))
    }

    /// The `connect` a client sends with these properties (the others
    /// absent), as the guard reads it: for tests and benchmarks.
    pub fn with(properties: &[(&str, &str)]) -> Result<ConnectRequest, CommandError> {
        let object = properties
            .iter()
            .map(|(k, v)| (k.to_string(), Amf0Value::String(v.to_string())))
            .collect();
        ConnectRequest::read(&Command {
            name: "connect".into(),
            transaction_id: 1.0,
            object: Amf0Value::Object(object),
            arguments: Vec::new(),
        })
    }

    fn read(cmd: &Command) -> Result<ConnectRequest, CommandError> {
        let malformed = |why| Err(CommandError::Malformed(why));
        if cmd.object.properties().is_none() {
            return malformed("connect without a command object");
        }
        if std::iter::once(&cmd.object)
            .chain(&cmd.arguments)
            .any(has_duplicate_keys)
        {
            return malformed("connect repeats a key");
        }
        let string = |k: &str| match cmd.object.get(k) {
            None => Ok(None),
            Some(Amf0Value::String(v)) => Ok(Some(v.clone())),
            Some(_) => Err(CommandError::Malformed(
                "connect app or tcUrl is not a string",
            )),
        };
        let field = |k: &str| {
            cmd.object
                .get(k)
                .and_then(Amf0Value::as_str)
                .map(str::to_string)
        };
        let Some(app_raw) = string("app")? else {
            return malformed("connect without an app");
        };
        Ok(ConnectRequest {
            transaction_id: cmd.transaction_id,
            app: route_name(&app_raw).to_string(),
            app_raw,
            tc_url: string("tcUrl")?,
            page_url: field("pageUrl"),
            swf_url: field("swfUrl"),
            flash_ver: field("flashVer"),
            command: cmd.clone(),
        })
    }

    /// The `connect` for the origin: every property in its order, the
    /// object's AMF type and every trailing argument as the client sent
    /// them; only `app` (the app the guard routed on, with the client's
    /// query) and the path of `tcUrl` (naming that app) change.
    pub fn for_origin(&self) -> Result<Vec<u8>, amf0::Amf0EncodeError> {
        let query = self.app_raw.find('?').map_or("", |i| &self.app_raw[i..]);
        let app = format!("{}{query}", self.app);
        let rewrite = |props: &[(String, Amf0Value)]| -> Vec<(String, Amf0Value)> {
            props
                .iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("app", _) => (k.clone(), Amf0Value::String(app.clone())),
                    ("tcUrl", Amf0Value::String(url)) => {
                        (k.clone(), Amf0Value::String(tc_url_for(url, &self.app)))
                    }
                    _ => (k.clone(), v.clone()),
                })
                .collect()
        };
        let object = match &self.command.object {
            Amf0Value::Object(props) => Amf0Value::Object(rewrite(props)),
            Amf0Value::EcmaArray(props) => Amf0Value::EcmaArray(rewrite(props)),
            other => other.clone(),
        };
        let mut values = vec![
            Amf0Value::String(self.command.name.clone()),
            Amf0Value::Number(self.command.transaction_id),
            object,
        ];
        values.extend(self.command.arguments.iter().cloned());
        amf0::encode(&values)
    }
}

/// `url` with its path replaced by `/app`, keeping scheme, host, port and
/// query. A URL without a scheme is left as it is.
pub fn tc_url_for(url: &str, app: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let after = &rest[authority_end..];
    let query = after.find('?').map_or("", |i| &after[i..]);
    format!(
        "{}{}/{app}{query}",
        &url[..scheme_end],
        &rest[..authority_end]
    )
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

    #[test]
    fn connect_for_the_origin_keeps_everything_but_app_and_the_tc_url_path() {
        let obj = Amf0Value::EcmaArray(vec![
            ("app".into(), Amf0Value::String("live/?token=abc".into())),
            (
                "fourCcList".into(),
                Amf0Value::StrictArray(vec![Amf0Value::String("hvc1".into())]),
            ),
            (
                "tcUrl".into(),
                Amf0Value::String("rtmp://h:1935/live/?token=abc".into()),
            ),
            ("flashVer".into(), Amf0Value::String("FMLE/3.0".into())),
        ]);
        let mut values = vec![
            Amf0Value::String("connect".into()),
            Amf0Value::Number(1.0),
            obj,
            Amf0Value::Boolean(true),
        ];
        let cmd = decode(20, &amf0::encode(&values).unwrap(), 32).unwrap();
        let req = ConnectRequest::from_command(&cmd).unwrap().unwrap();
        let out = decode(20, &req.for_origin().unwrap(), 32).unwrap();
        let Amf0Value::EcmaArray(props) = &out.object else {
            panic!("the object's AMF type changed");
        };
        let keys: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["app", "fourCcList", "tcUrl", "flashVer"]);
        assert_eq!(
            out.object.get("app"),
            Some(&Amf0Value::String("live?token=abc".into()))
        );
        assert_eq!(
            out.object.get("tcUrl"),
            Some(&Amf0Value::String("rtmp://h:1935/live?token=abc".into()))
        );
        assert_eq!(out.arguments, vec![Amf0Value::Boolean(true)]);
        values[2] = Amf0Value::Object(vec![
            ("app".into(), Amf0Value::String("live".into())),
            ("app".into(), Amf0Value::String("hidden".into())),
        ]);
        let cmd = decode(20, &amf0::encode(&values).unwrap(), 32).unwrap();
        assert!(ConnectRequest::from_command(&cmd).unwrap().is_err());
        values[2] = Amf0Value::Object(vec![("app".into(), Amf0Value::Number(1.0))]);
        let cmd = decode(20, &amf0::encode(&values).unwrap(), 32).unwrap();
        assert!(ConnectRequest::from_command(&cmd).unwrap().is_err());
    }

    #[test]
    fn tc_urls_keep_scheme_host_port_and_query() {
        assert_eq!(tc_url_for("rtmp://h/other", "live"), "rtmp://h/live");
        assert_eq!(
            tc_url_for("rtmps://h:443/x/y?k=v", "live"),
            "rtmps://h:443/live?k=v"
        );
        assert_eq!(tc_url_for("rtmp://h", "live"), "rtmp://h/live");
        assert_eq!(tc_url_for("not a url", "live"), "not a url");
    }

    #[test]
    fn a_stream_name_is_replaced_where_the_origin_reads_it_and_nothing_else_changes() {
        let s = |v: &str| Amf0Value::String(v.into());
        let cases = [
            ("publish", vec![s("sk_1?x=y"), s("live")]),
            ("releaseStream", vec![s("sk_1")]),
            ("FCPublish", vec![s("sk_1")]),
            ("FCUnpublish", vec![s("sk_1")]),
            ("play", vec![s("sk_1"), Amf0Value::Number(-2.0)]),
            ("closeStream", vec![s("sk_1")]),
            ("deleteStream", vec![s("sk_1")]),
            ("getStreamLength", vec![s("sk_1")]),
            ("FCUnsubscribe", vec![s("sk_1")]),
            (
                "play2",
                vec![Amf0Value::EcmaArray(vec![
                    ("start".into(), Amf0Value::Number(0.0)),
                    ("streamName".into(), s("sk_1")),
                    ("transition".into(), s("switch")),
                ])],
            ),
        ];
        for (name, arguments) in cases {
            let cmd = Command {
                name: name.into(),
                transaction_id: 4.0,
                object: Amf0Value::Null,
                arguments,
            };
            assert_eq!(
                classify(&cmd)
                    .unwrap()
                    .stream_name()
                    .map(|n| n.starts_with("sk_1")),
                Some(true),
                "{name}"
            );
            let bytes = super::encode(&with_stream_name(&cmd, "cam7")).unwrap();
            let out = decode(20, &bytes, 8).unwrap();
            assert_eq!(
                classify(&out).unwrap().stream_name(),
                Some("cam7"),
                "{name}"
            );
            assert!(!String::from_utf8_lossy(&bytes).contains("sk_1"), "{name}");
            let mut back = with_stream_name(&out, "sk_1?x=y");
            if name != "publish" {
                back = with_stream_name(&out, "sk_1");
            }
            assert_eq!(back, cmd, "{name}: only the name changed");
        }
        let other = Command {
            name: "deleteStream".into(),
            transaction_id: 4.0,
            object: Amf0Value::Null,
            arguments: vec![Amf0Value::Number(1.0)],
        };
        assert_eq!(classify(&other).unwrap().stream_name(), None);
        assert_eq!(with_stream_name(&other, "cam7"), other);
    }

    #[test]
    fn names_that_read_as_known_commands() {
        assert_eq!(reads_as_known("PUBLISH"), Some("publish"));
        assert_eq!(reads_as_known("publish\0junk"), Some("publish"));
        assert_eq!(reads_as_known("fcpublish"), Some("FCPublish"));
        assert_eq!(reads_as_known("publishx"), None);
        assert_eq!(reads_as_known("getServerTime"), None);
    }
}
