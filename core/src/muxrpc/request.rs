//! A request's body, and whether the manifest serves it.

use serde_json::Value;

use super::{Body, CallKind, RpcError};

/// A request as its first packet states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) kind: CallKind,
    /// The method's path (`["blobs", "get"]`).
    pub(super) name: Vec<String>,
    /// Always an array.
    pub(super) args: Value,
}

/// Reads a request's body: `{"name": [..] or "..", "args": [..], "type":
/// ".."}`, `type` only for streams (JS muxrpc 8 leaves it out of async
/// calls). The error is the answer to send.
pub(super) fn parse(body: &Body, stream: bool) -> Result<Request, RpcError> {
    let invalid = |why: &str| RpcError::new(format!("invalid request: {why}"));
    let value = body.to_json().map_err(|_| invalid("not JSON"))?;
    let Value::Object(mut fields) = value else {
        return Err(invalid("not an object"));
    };
    let name = match fields.remove("name") {
        Some(Value::String(name)) => vec![name],
        Some(Value::Array(parts)) if !parts.is_empty() => parts
            .into_iter()
            .map(|part| match part {
                Value::String(part) => Ok(part),
                _ => Err(invalid("a name part that is not a string")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(invalid("no name")),
    };
    let args = match fields.remove("args") {
        Some(args @ Value::Array(_)) => args,
        other => {
            let shown = other.map_or("nothing".to_owned(), |v| v.to_string());
            return Err(RpcError::new(format!(
                "invalid request, args should be array, was: {shown}"
            )));
        }
    };
    let kind = match (stream, fields.get("type").and_then(Value::as_str)) {
        (false, _) => CallKind::Async,
        (true, Some("source")) => CallKind::Source,
        (true, Some("sink")) => CallKind::Sink,
        (true, Some("duplex")) => CallKind::Duplex,
        (true, other) => {
            let shown = other.unwrap_or("none");
            return Err(RpcError::new(format!("unsupported stream type: {shown}")));
        }
    };
    Ok(Request { kind, name, args })
}

/// The body of a call this side makes, as muxrpc 8 writes it: `name`,
/// `args`, and for streams `type`, in that order.
pub(super) fn body(kind: CallKind, name: &[&str], args: &Value) -> Body {
    let (name, args) = (Value::from(name), args.to_string());
    let text = match kind {
        CallKind::Async => format!(r#"{{"name":{name},"args":{args}}}"#),
        stream => format!(
            r#"{{"name":{name},"args":{args},"type":"{}"}}"#,
            stream.as_str()
        ),
    };
    Body {
        kind: super::BodyType::Json,
        bytes: text.into_bytes().into(),
    }
}

/// Whether `manifest` serves `name` as `kind` (a `sync` method answers
/// async calls); the error is JS muxrpc's refusal.
pub(super) fn check(manifest: &Value, kind: CallKind, name: &[String]) -> Result<(), RpcError> {
    let listed = name
        .iter()
        .try_fold(manifest, |node, part| node.get(part))
        .and_then(Value::as_str);
    let served = match (kind, listed) {
        (CallKind::Async, Some("async" | "sync")) => true,
        (kind, Some(listed)) => kind.as_str() == listed,
        (_, None) => false,
    };
    match served {
        true => Ok(()),
        // JS renders the path array joined by commas.
        false => Err(RpcError::new(format!(
            "no {}:{}",
            kind.as_str(),
            name.join(",")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_names_its_method_by_path_or_string_and_streams_say_their_type() {
        let async_call = Body::json(&json!({"name": ["whoami"], "args": []}));
        assert_eq!(
            parse(&async_call, false),
            Ok(Request {
                kind: CallKind::Async,
                name: vec!["whoami".into()],
                args: json!([])
            })
        );
        let source =
            Body::json(&json!({"name": "log", "args": [{"live": true}], "type": "source"}));
        assert_eq!(parse(&source, true).unwrap().kind, CallKind::Source);
        let untyped = Body::json(&json!({"name": ["x"], "args": []}));
        assert_eq!(
            parse(&untyped, true).unwrap_err().message,
            "unsupported stream type: none"
        );
        let bad_args = Body::json(&json!({"name": ["x"], "args": 3}));
        assert_eq!(
            parse(&bad_args, false).unwrap_err().message,
            "invalid request, args should be array, was: 3"
        );
        assert!(parse(&Body::text("hello"), false).is_err());
    }

    #[test]
    fn the_manifest_decides_what_is_served() {
        let manifest = json!({"whoami": "sync", "blobs": {"get": "source"}});
        assert!(check(&manifest, CallKind::Async, &["whoami".into()]).is_ok());
        assert!(check(&manifest, CallKind::Source, &["blobs".into(), "get".into()]).is_ok());
        let refused = check(&manifest, CallKind::Sink, &["blobs".into(), "get".into()]);
        assert_eq!(refused.unwrap_err().message, "no sink:blobs,get");
        assert!(check(&manifest, CallKind::Async, &["blobs".into()]).is_err());
    }
}
