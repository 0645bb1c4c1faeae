//! An SSB server's muxrpc as a plugboard plugin: what SSB clients as they
//! are (ssb-client, secret-stack peers) reach through the broker's legacy
//! route (`plugboard serve --legacy-listen tcp:HOST:PORT --legacy-route
//! NAME`), on the muxrpc session in `plugboard-core`.
//!
//! `ssb_server SECRET BROKER NAME SSB_ID [REJECT_KEY...]`: registers NAME
//! and serves every client the broker offers it, but those whose key is
//! listed (rejected: the client's handshake then ends with no message 4):
//!
//! - `manifest` (sync): what follows;
//! - `whoami` (sync): `{ "id": SSB_ID }`, the identity the clients dialled;
//! - `hello` (async): `{ "caller": <the client's id> }`: the key the
//!   handshake proved, which the broker passed on with the offer;
//! - `count` (source): `0, 1, ... n-1` for `count(n)`;
//! - `upload` (sink): takes what is sent, and `uploaded` (async) says how
//!   many bytes it took;
//! - `stall` (async): never answers (a call in flight, for tests; it
//!   prints `stalled` when the call arrives).
//!
//! `SSB_SERVER_ACCEPT_DELAY_MS` makes it take that long to accept each
//! client (a server that looks something up first).

use plugboard_tokio::muxrpc::{Body, Calls, Config, RpcError};
use plugboard_tokio::Plugin;
use serde_json::{json, Value};

type Failure = Box<dyn std::error::Error>;

fn manifest() -> Value {
    json!({
        "manifest": "sync",
        "whoami": "sync",
        "hello": "async",
        "count": "source",
        "upload": "sink",
        "uploaded": "async",
        "stall": "async"
    })
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [secret, broker, name, ssb_id, reject @ ..] = &args[..] else {
        return Err("usage: ssb_server SECRET BROKER NAME SSB_ID [REJECT_KEY...]".into());
    };
    let keypair = plugboard_core::keys::secret_file::read(secret.as_ref())?;
    let delay = std::env::var("SSB_SERVER_ACCEPT_DELAY_MS").ok();
    let delay = std::time::Duration::from_millis(delay.map_or(Ok(0), |ms| ms.parse())?);
    let plugin = Plugin::builder(keypair).name(name).connect(broker).await?;
    println!("serving {name} as {ssb_id}");
    while let Some(incoming) = plugin.incoming().await {
        let caller = incoming.from_key.to_string();
        if reject.contains(&caller) || incoming.protocol != "muxrpc" {
            println!("rejected {caller}");
            incoming.reject("not served here")?;
            continue;
        }
        let ssb_id = ssb_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            println!("serving {caller}");
            if let Ok(channel) = incoming.accept().await {
                let (_rpc, calls) = channel.muxrpc(Config::new(manifest()));
                serve(calls, caller, ssb_id).await;
            }
        });
    }
    Ok(())
}

async fn serve(mut calls: Calls, caller: String, ssb_id: String) {
    let mut stalled = Vec::new();
    let mut uploaded = 0u64;
    while let Some(call) = calls.next().await {
        let answer = match call.name.join(".").as_str() {
            "manifest" => Ok(Body::json(&manifest())),
            "whoami" => Ok(Body::json(&json!({ "id": ssb_id }))),
            "hello" => Ok(Body::json(&json!({ "caller": caller }))),
            "count" => {
                let n = call.args[0].as_i64().unwrap_or(0);
                let Ok(mut stream) = call.into_stream() else {
                    continue;
                };
                for i in 0..n {
                    let _ = stream.send(Body::json(&json!(i))).await;
                }
                let _ = stream.end(Ok(()));
                continue;
            }
            "uploaded" => Ok(Body::json(&json!(uploaded))),
            "upload" => {
                let Ok(mut stream) = call.into_stream() else {
                    continue;
                };
                while let Some(Ok(item)) = stream.recv().await {
                    uploaded += item.bytes.len() as u64;
                }
                continue;
            }
            "stall" => {
                println!("stalled");
                stalled.push(call);
                continue;
            }
            other => Err(RpcError::new(format!("not served: {other}"))),
        };
        let _ = call.respond(answer);
    }
}
