//! The Rust side of the muxrpc interop test (`interop/muxrpc.sh`).
//!
//! `muxrpc_peer serve SECRET BROKER NAME`: registers NAME and serves, on
//! every channel, `whoami` (the caller's id), `add`, `fail` (an error),
//! `count` (a source), `collect` (a sink; `collected` says what it took)
//! and `echo` (a duplex stream).
//!
//! `muxrpc_peer call SECRET BROKER NAME`: opens a channel to NAME (a JS
//! muxrpc server, run by `plugboard expose`), calls the same methods,
//! checks every answer, says goodbye first, and prints `ok`.

use plugboard_tokio::muxrpc::{Body, CallError, Calls, Config, Error, Rpc, RpcError};
use plugboard_tokio::Plugin;
use serde_json::{json, Value};

type Failure = Box<dyn std::error::Error>;

fn manifest() -> Value {
    json!({
        "manifest": "sync",
        "whoami": "sync",
        "add": "async",
        "fail": "async",
        "count": "source",
        "collect": "sink",
        "collected": "async",
        "echo": "duplex"
    })
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, secret, broker, name] = &args[..] else {
        return Err("usage: muxrpc_peer serve|call SECRET BROKER NAME".into());
    };
    let keypair = plugboard_core::keys::secret_file::read(secret.as_ref())?;
    match mode.as_str() {
        "serve" => {
            let plugin = Plugin::builder(keypair).name(name).connect(broker).await?;
            println!("serving {name}");
            while let Some(incoming) = plugin.incoming().await {
                let caller = incoming.from_key.to_string();
                let (_rpc, calls) = incoming.accept().await?.muxrpc(Config::new(manifest()));
                tokio::spawn(serve(calls, caller));
            }
            Ok(())
        }
        "call" => {
            let me = keypair.public().to_string();
            let plugin = Plugin::builder(keypair).connect(broker).await?;
            let (rpc, _calls) = plugin
                .open(name, "muxrpc")
                .await?
                .muxrpc(Config::new(json!({})));
            call(&rpc, &me).await?;
            rpc.close().await?;
            println!("ok");
            Ok(())
        }
        other => Err(format!("unknown mode {other}").into()),
    }
}

async fn serve(mut calls: Calls, caller: String) {
    let mut collected: Vec<Value> = Vec::new();
    while let Some(call) = calls.next().await {
        let arg = |i: usize| call.args[i].as_i64().unwrap_or(0);
        let answer = match call.name.join(".").as_str() {
            "whoami" => Ok(Body::json(&json!({ "id": caller }))),
            "add" => Ok(Body::json(&json!(arg(0) + arg(1)))),
            "fail" => Err(RpcError::new("failed as asked")),
            "collected" => Ok(Body::json(&Value::from(collected.clone()))),
            "count" => {
                let n = arg(0);
                let Ok(mut stream) = call.into_stream() else {
                    continue;
                };
                for i in 0..n {
                    let _ = stream.send(Body::json(&json!(i))).await;
                }
                let _ = stream.end(Ok(()));
                continue;
            }
            "collect" => {
                let Ok(mut stream) = call.into_stream() else {
                    continue;
                };
                while let Some(Ok(item)) = stream.recv().await {
                    collected.push(item.to_json().unwrap_or(Value::Null));
                }
                continue;
            }
            "echo" => {
                let Ok(mut stream) = call.into_stream() else {
                    continue;
                };
                tokio::spawn(async move {
                    while let Some(Ok(item)) = stream.recv().await {
                        let _ = stream.send(item).await;
                    }
                });
                continue;
            }
            other => Err(RpcError::new(format!("not served: {other}"))),
        };
        let _ = call.respond(answer);
    }
}

fn check(what: &str, got: Value, want: Value) -> Result<(), Failure> {
    match got == want {
        true => Ok(()),
        false => Err(format!("{what}: got {got}, want {want}").into()),
    }
}

async fn collect(mut stream: plugboard_tokio::muxrpc::Stream) -> Result<Vec<Value>, Failure> {
    let mut out = Vec::new();
    while let Some(item) = stream.recv().await {
        out.push(item?.to_json()?);
    }
    Ok(out)
}

async fn call(rpc: &Rpc, me: &str) -> Result<(), Failure> {
    let manifest_body = rpc.call(&["manifest"], json!([])).await?;
    check("manifest", manifest_body.to_json()?, manifest())?;
    let who = rpc.call(&["whoami"], json!([])).await?.to_json()?;
    check("whoami", who, json!({ "id": me }))?;
    check(
        "add",
        rpc.call(&["add"], json!([2, 40])).await?.to_json()?,
        json!(42),
    )?;
    match rpc.call(&["fail"], json!([])).await {
        Err(Error::Call(CallError::Remote(e))) if e.message == "failed as asked" => {}
        other => return Err(format!("fail: got {other:?}").into()),
    }
    let counted = collect(rpc.source(&["count"], json!([4]))?).await?;
    check("count", Value::from(counted), json!([0, 1, 2, 3]))?;
    let mut sink = rpc.sink(&["collect"], json!([]))?;
    for word in ["to", "the", "sink"] {
        sink.send(Body::text(word)).await?;
    }
    sink.end(Ok(()))?;
    while sink.recv().await.is_some() {}
    let collected = rpc.call(&["collected"], json!([])).await?.to_json()?;
    check("collected", collected, json!(["to", "the", "sink"]))?;
    let mut echo = rpc.duplex(&["echo"], json!([]))?;
    for word in ["one", "two"] {
        echo.send(Body::text(word)).await?;
    }
    echo.end(Ok(()))?;
    check(
        "echo",
        Value::from(collect(echo).await?),
        json!(["one", "two"]),
    )?;
    Ok(())
}
